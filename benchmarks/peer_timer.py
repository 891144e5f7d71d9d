"""Run a peer's training script with a clock on its batches: `python peer_timer.py SCRIPT ARGS...`.

Started by benchmarks/peers.py inside a peer's source tree (its working directory), never imported by
this project. Every training batch of both peers ends its forward pass with exactly one
`Tensor.backward` call (`scaler.scale(loss).backward()`), and nothing else in their training scripts
calls it, so counting those calls counts batches without editing the peers' code. The clock runs from
the end of batch `PEER_TIMER_START - 1` to the end of batch `PEER_TIMER_LAST` (the GPU synchronised at
those two points only), the same number of whole batches as this project's BatchTimer. At the last
timed batch the result is written as JSON to PEER_TIMER_OUT and the process exits: what follows (the
final validation, checkpoints) is not timed for either side, so it is not run.
"""
import json
import os
import runpy
import sys
import time

import torch

START, LAST = int(os.environ['PEER_TIMER_START']), int(os.environ['PEER_TIMER_LAST'])
OUT = os.environ['PEER_TIMER_OUT']
state = {'calls': 0, 't0': None}


def now():
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


def peak_gb():
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 1e9
    return None


plain_backward = torch.Tensor.backward


def counted_backward(self, *args, **kwargs):
    result = plain_backward(self, *args, **kwargs)
    i = state['calls']
    state['calls'] += 1
    if i == START - 1:
        state['t0'] = now()
    elif i == LAST:
        seconds = now() - state['t0']
        with open(OUT, 'w') as f:
            json.dump({'batches': LAST - START + 1, 'seconds': seconds, 'peak_gb': peak_gb()}, f)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # loader workers notice their parent is gone and stop
    return result


if __name__ == '__main__':
    if START < 1 or LAST < START:
        raise SystemExit(f'peer_timer: need 1 <= PEER_TIMER_START <= PEER_TIMER_LAST, got {START}, {LAST}')
    torch.Tensor.backward = counted_backward
    script = os.path.abspath(sys.argv[1])
    sys.argv = sys.argv[1:]
    sys.path[0] = os.path.dirname(script)  # the peer's tree first, as when it is run directly
    runpy.run_path(script, run_name='__main__')
    raise SystemExit(f'peer_timer: {script} ended after {state["calls"]} batches, before batch {LAST}')
