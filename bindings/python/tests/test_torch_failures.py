"""skyring.torch when a rank dies: every survivor raises HorovodInternalError naming it,
within the configured timeout, and nothing hangs.

The job under test is started here, with the torchrun-style variables skyring reads (3
local ranks, one of which exits in the middle of training), so it does not disturb the
mpirun job this file may run in: there only world rank 0 starts it, the others skip.
"""

import textwrap

import pytest
from torch_jobs import outer_rank, run_job

RANK_SCRIPT = textwrap.dedent("""
    import os, sys
    import torch
    import skyring.torch as hvd

    hvd.init()
    model = torch.nn.Linear(4, 2)
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                   named_parameters=model.named_parameters())
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    for step in range(3):
        if step == 2 and hvd.rank() == 2:
            os._exit(7)  # dies without a word to the others
        opt.zero_grad()
        model(torch.ones(8, 4)).sum().backward()
        try:
            opt.step()
        except hvd.HorovodInternalError as e:
            print("survivor", hvd.rank(), "raised:", e, flush=True)
            os._exit(0 if "rank 2" in str(e) else 3)
    os._exit(4)  # the step after the death did not fail
""")


@pytest.mark.skipif(outer_rank() != 0, reason="one rank of the outer job starts the job under test")
def test_a_dead_rank_fails_every_survivor_naming_it(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    results = run_job(script, 3, SKYRING_TIMEOUT_MS="5000")
    outputs = [out for _, out in results]
    assert [code for code, _ in results] == [0, 0, 7], "\n".join(outputs)
    for r in (0, 1):
        assert f"survivor {r} raised" in outputs[r], outputs[r]
