"""sat.imports.*: SAT imports without its undeclared dependencies."""
import subprocess
import sys
import textwrap

from porter_sat.rules.imports import WANDB

from porter.testing import assert_rewrites, assert_untouched


def test_wandb_bare_import_is_dropped():
    assert_rewrites(WANDB, """
        import deepspeed
        import wandb

        try:
            import wandb
        except ImportError:
            print("wandb not installed.")
    """, """
        import deepspeed

        try:
            import wandb
        except ImportError:
            print("wandb not installed.")
    """)


def test_wandb_guarded_and_local_imports_stay():
    assert_untouched(WANDB, """
        try:
            import wandb
        except ImportError:
            wandb = None

        def init_writer():
            import wandb
            wandb.init()

        import wandb as wb
    """)


BLOCK_WANDB = textwrap.dedent("""
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name == "wandb" or name.startswith("wandb."):
                raise ModuleNotFoundError("No module named 'wandb' (blocked by the test)")
    sys.meta_path.insert(0, Block())
    sys.path.insert(0, sys.argv[1])
    import sat.training.deepspeed_training as m
    assert m.__file__.startswith(sys.argv[1]), m.__file__
    print("imported")
""")


def import_without_wandb(site):
    return subprocess.run([sys.executable, "-c", BLOCK_WANDB, str(site)], capture_output=True, text=True, timeout=300)


def test_patched_sat_trains_module_imports_without_wandb(sat_site):
    from porter.testing import run_porter

    r = import_without_wandb(sat_site)
    assert r.returncode != 0 and "No module named 'wandb'" in r.stderr
    r = run_porter("patch", "sat", "--only", "sat.imports.wandb", "--site-packages", str(sat_site))
    assert r.returncode == 0, r.stderr
    r = import_without_wandb(sat_site)
    assert r.returncode == 0 and "imported" in r.stdout, r.stderr
