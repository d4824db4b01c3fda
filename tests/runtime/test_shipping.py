"""User code reaches processes that cannot see the user's files: a job ships a model file as Ray `py_modules`, and
an actor resolves `/path/nets.py:make_net` from the shipped copy once the path is gone (as on another node)."""

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent('''
    import sys
    from pathlib import Path
    from msfusion_ray.runtime.cluster import start_local_ray
    from msfusion_ray.code_refs import job_runtime_env, load_ref

    nets = Path(sys.argv[1])
    ref = f"{nets}:make_net"
    start_local_ray(num_cpus=1, include_dashboard=False, object_store_memory=80 * 1024**2,
                    runtime_env=job_runtime_env([ref, "cnn"]))
    nets.unlink()  # shipped with the job at start; no process can read it from here any more
    import ray

    @ray.remote(num_cpus=0)
    def resolve(text):
        return load_ref(text, "model.name")(None, {})

    print("RESULT", ray.get(resolve.remote(ref), timeout=120))
    ray.shutdown()
''')


def test_a_model_file_is_shipped_with_the_job_and_found_where_its_path_is_not(tmp_path):
    nets = tmp_path / "user_nets_shipped.py"
    nets.write_text("def make_net(shape, options):\n    return 'built from the shipped copy'\n")
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(nets)], capture_output=True, text=True, timeout=300,
                          cwd=root)
    assert "RESULT built from the shipped copy" in done.stdout, done.stderr[-2000:]
    assert not nets.exists()
