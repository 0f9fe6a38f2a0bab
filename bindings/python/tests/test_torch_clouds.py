"""skyring.torch across two emulated clouds: skyring's codecs run on the cross-cloud hop only,
when asked. A plain allreduce (Compression.none) stays exact whatever SKYRING_COMPRESSION
says; Compression.int8 compresses it; DistributedOptimizer's gradients get the job's codec
(SKYRING_COMPRESSION=int8 here) with Horovod's default Compression.none. The job (4 local
ranks, 2 per cloud) is started here; in an mpirun job only its rank 0 starts it.
"""

import json
import textwrap

import pytest
from torch_jobs import outer_rank, run_job

RANK_SCRIPT = textwrap.dedent("""
    import json
    import torch
    import skyring.torch as hvd
    from skyring import _core

    hvd.init()
    r, n = hvd.rank(), hvd.size()

    def sent():
        return _core.stats()["cross-cloud"]["bytes"]

    g = torch.Generator().manual_seed(5)
    base = torch.randint(-50, 50, (1 << 18,), generator=g).float()
    x = base * (r + 1)
    want = base * (n * (n + 1) // 2)
    b0 = sent()
    exact = hvd.allreduce(x, op=hvd.Sum, name="exact")
    b1 = sent()
    coded = hvd.allreduce(x, op=hvd.Sum, name="coded", compression=hvd.Compression.int8)
    b2 = sent()
    p = torch.nn.Parameter(torch.zeros(1 << 18))
    opt = hvd.DistributedOptimizer(torch.optim.SGD([p], lr=1.0), named_parameters=[("p", p)])
    (p * x).sum().backward()
    opt.synchronize()
    b3 = sent()
    err = lambda t, w: ((t - w).abs().max() / w.abs().max()).item()
    print("RESULT", json.dumps({
        "exact": torch.equal(exact, want), "coded_err": err(coded, want),
        "grad_err": err(p.grad, want / n), "bytes": [b1 - b0, b2 - b1, b3 - b2]}), flush=True)
    hvd.shutdown()
""")


@pytest.mark.skipif(outer_rank() != 0, reason="one rank of the outer job starts the job under test")
def test_codecs_run_on_the_cross_cloud_hop_when_asked(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    results = run_job(script, 4, lambda r: {"SKYRING_CLOUD": "aws" if r < 2 else "gcp"},
                      SKYRING_COMPRESSION="int8", SKYRING_TIMEOUT_MS="20000")
    assert [code for code, _ in results] == [0] * 4, "\n".join(out for _, out in results)
    rows = [json.loads(out.split("RESULT ", 1)[1].splitlines()[0]) for _, out in results]
    for row in rows:
        assert row["exact"], row  # Compression.none: exact, SKYRING_COMPRESSION or not
        assert 0 < row["coded_err"] < 0.05, row  # int8 on the WAN hop: close, not exact
        assert 0 < row["grad_err"] < 0.05, row  # gradients: the job's codec
    exact_bytes, coded_bytes, grad_bytes = (sum(row["bytes"][i] for row in rows)
                                            for i in range(3))
    assert exact_bytes > 0
    assert coded_bytes < 0.5 * exact_bytes and grad_bytes < 0.5 * exact_bytes, rows
