"""Run train.py / train_distillation.py as one rank of a DDP job whose ranks share ONE GPU (issue 30, item 4).

    torchrun --nproc_per_node 2 benchmarks/ddp_one_gpu.py train_distillation.py --device 0 ...

train.py puts rank r on cuda:LOCAL_RANK and picks NCCL for any CUDA device; NCCL refuses two ranks on
one GPU. With a single GPU lent, this launcher makes every rank see itself as local rank 0 (so all use
cuda:0), keeps "rank 0 first" ordered by the global rank, and turns the process group into gloo, which
reduces CUDA tensors through host copies: the DDP wrapping of the model and of the objective's
trainable parts runs with real CUDA tensors, at gloo's speed, so it is a check of correctness, not a
speed figure. Ranks and world size stay torchrun's.
On a machine with as many GPUs as ranks, run the script itself under torchrun instead (NCCL).
"""
import os
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

if __name__ == '__main__':
    os.environ['LOCAL_RANK'] = '0'  # read by utils.torch_utils at import: set before the script imports it
    import torch.distributed as dist

    plain_init = dist.init_process_group

    def gloo_init(*args, **kwargs):
        kwargs['backend'] = 'gloo'
        return plain_init(*args[1:], **kwargs) if args else plain_init(**kwargs)

    dist.init_process_group = gloo_init
    sys.path.insert(0, str(ROOT))
    import utils.torch_utils as tu  # before the trainer imports the name below

    # "rank 0 first" (label scans, generated data) must still order the ranks: by the global rank now
    plain_zero_first = tu.torch_distributed_zero_first
    tu.torch_distributed_zero_first = lambda local_rank: plain_zero_first(int(os.environ.get('RANK', local_rank)))
    script = str(ROOT / sys.argv[1])
    sys.argv = sys.argv[1:]
    runpy.run_path(script, run_name='__main__')
