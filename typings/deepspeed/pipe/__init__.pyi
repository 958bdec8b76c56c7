from deepspeed.runtime.pipe.module import PipelineModule as PipelineModule
