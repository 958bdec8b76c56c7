# Probed on first access: op name -> whether DeepSpeed may JIT-build it on this host.
__compatible_ops__: dict[str, bool]
