"""What the engine adapters share: the boundary codec, the model inputs of stage 0, the
example run that decides each stage's codec, and the tied-weight sync across ranks.

Used by `adapters.pipelining` (torch.distributed.pipelining) and `adapters.deepspeed`
(DeepSpeed's pipeline engine); nothing here depends on either engine.
"""

from adapters.engine.codec import OutputDecoder, StageIO, UnsupportedBoundaryValue, WireFormat, wire_format
from adapters.engine.inputs import FirstInputs, bind_inputs, microbatch
from adapters.engine.run import ExampleRun, example_run, stage_ios
from adapters.engine.ties import TieSync

__all__ = [
    "ExampleRun", "FirstInputs", "OutputDecoder", "StageIO", "TieSync", "UnsupportedBoundaryValue", "WireFormat",
    "bind_inputs", "example_run", "microbatch", "stage_ios", "wire_format",
]
