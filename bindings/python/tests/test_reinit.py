"""skyring._core shut down and initialised again at once, many times, under torchrun-style
variables (the TCP store): every init joins a new store, never the last one's.

A rank that returned from shutdown() before rank 0 had stopped its store could join the
old store again, which still held its claim, and the new init failed on every rank ("two
processes claim rank N"). The job under test is started here (4 local ranks), so it does
not disturb the mpirun job this file may run in: there only world rank 0 starts it.
"""

import textwrap

import pytest
from torch_jobs import outer_rank, run_job

RANK_SCRIPT = textwrap.dedent("""
    import torch
    from skyring import _core as c

    c.init()
    for i in range(20):
        c.shutdown()
        c.init()
        t = torch.ones(2)
        c.allreduce_async(f"reinit.{i}", t.data_ptr(), [2], "f32").wait()
        assert t[0].item() == c.size(), t
    c.shutdown()
    print("rank", c.rank() if c.is_initialized() else "-", "re-initialised 20 times", flush=True)
""")


@pytest.mark.skipif(outer_rank() != 0, reason="one rank of the outer job starts the job under test")
def test_shutdown_and_init_again_at_once_many_times(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    results = run_job(script, 4)
    outputs = [out for _, out in results]
    assert [code for code, _ in results] == [0, 0, 0, 0], "\n".join(outputs)
