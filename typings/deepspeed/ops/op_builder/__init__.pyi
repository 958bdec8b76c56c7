class OpBuilder:
    NAME: str

class ShareMemCommBuilder(OpBuilder): ...
