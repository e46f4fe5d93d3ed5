"""The ``neural_collapse`` evaluate metric: numbers, card examples, loading, configurations, errors."""

import doctest
import os
import re
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import evaluate
import evaluate.config
import numpy as np
import pytest
import torch

from hf_collapse import CollapseStatistics, measure_collapse
from hf_collapse.cli import main as cli_main
from hf_collapse.integrations import metric as reg

REPO = Path(__file__).resolve().parents[1]
METRIC_DIR = REPO / "metrics" / "neural_collapse"
PY = sys.executable


@pytest.fixture(scope="module")
def evaluate_env(tmp_path_factory):
    """Offline evaluate with the metric registered in a private modules cache and Arrow files in tmp."""
    tmp = tmp_path_factory.mktemp("evaluate_env")
    mp = pytest.MonkeyPatch()
    # evaluate imports dynamic modules as the package `evaluate_modules`; once imported (by another
    # test) it stays bound to its folder, so register there instead of in a fresh one
    if "evaluate_modules" in sys.modules:
        cache = Path(list(sys.modules["evaluate_modules"].__path__)[0]).parent
    else:
        cache = tmp / "modules"
    mp.setattr(evaluate.config, "HF_MODULES_CACHE", cache)
    mp.setattr(evaluate.config, "HF_METRICS_CACHE", tmp / "metrics")
    mp.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)
    reg.register_metric(cache)
    yield tmp
    mp.undo()


def _load(tmp, config_name=None, **kw):
    return evaluate.load(str(METRIC_DIR), config_name, cache_dir=str(tmp / "arrow"), **kw)


def _data(seed=0, C=7, d=16, sizes=(50, 33, 70)):
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(C, d, generator=g)
    batches = []
    for n in sizes:
        y = torch.randint(0, C, (n,), generator=g)
        batches.append((centres[y] + torch.randn(n, d, generator=g), y))
    return centres, batches


def test_matches_core_on_random_data(evaluate_env):
    centres, batches = _data()
    C, d = centres.shape
    W, b = torch.randn(C, d), torch.randn(C)
    y_test = torch.randint(0, C, (40,))
    h_test = centres[y_test] + torch.randn(40, d)
    nc = _load(evaluate_env)
    stats = CollapseStatistics(C, d)
    for h, y in batches:
        y = y.clone()
        y[::9] = -100  # ignored by both
        nc.add_batch(features=h, labels=y)  # torch tensors accepted
        stats.update(h, y)
    got = nc.compute(weights=W, bias=b, test_features=h_test, test_labels=y_test)
    want = measure_collapse(stats, weights=W, bias=b, features=h_test, labels=y_test)
    assert set(got) == set(want) and "nc4_agreement" in got and "nc3_duality_mean" in got
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-15), key
    # float64 features stay float64 end to end; k and dtype reach the core
    nc = _load(evaluate_env)
    for h, y in batches:
        nc.add_batch(features=h.double().numpy(), labels=y.numpy())
    got = nc.compute(num_classes=C, k=1.0, dtype="float64")
    stats = CollapseStatistics(C, d)
    for h, y in batches:
        stats.update(h.double(), y)
    want = measure_collapse(stats, k=1.0, dtype=torch.float64)
    assert got == pytest.approx(dict(want), rel=1e-12)


def _doctests(text, name):
    return doctest.DocTestParser().get_doctest(text, {}, name, name, 0)


def _run_examples(text, name):
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    test = _doctests(text, name)
    runner.run(test)
    return runner.summarize(verbose=False), len(test.examples)


def test_card_and_docstring_examples_run(evaluate_env):
    card = (METRIC_DIR / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    doc_blocks = [blk for blk in blocks if ">>>" in blk]
    assert len(doc_blocks) >= 2
    result, n = _run_examples("\n".join(doc_blocks), "README.md")
    assert result.failed == 0 and n >= 10, result
    # the module's own docstring examples, as evaluate's test_metric_common runs them
    namespace = {}
    exec(
        compile((METRIC_DIR / "neural_collapse.py").read_text(encoding="utf-8"), "neural_collapse.py", "exec"),
        namespace,
    )
    result, n = _run_examples(namespace["_KWARGS_DESCRIPTION"], "neural_collapse._KWARGS_DESCRIPTION")
    assert result.failed == 0 and n >= 10, result


def test_examples_fail_when_numbers_are_wrong(evaluate_env):
    # guards the example runner itself: a wrong expected value must be reported as a failure
    text = (
        ">>> import evaluate, numpy as np\n>>> nc = evaluate.load('neural_collapse')\n"
        ">>> r = nc.compute(features=np.array([[1., 0], [3, 0], [0, 2], [0, 4]]), labels=np.array([0, 0, 1, 1]))\n"
        ">>> round(r['nc1_cdnv'], 6)\n0.5\n"
    )
    result, _ = _run_examples(text, "wrong")
    assert result.failed == 1


def test_the_module_lives_once_and_the_package_reads_it():
    """metrics/neural_collapse/ is the one physical copy; the package reaches it as hf_collapse.evaluate_module."""
    assert reg.shipped_metric_dir().resolve() == METRIC_DIR.resolve()
    assert not (REPO / "src" / "hf_collapse" / "evaluate_module").exists()
    assert {p.name for p in METRIC_DIR.iterdir() if p.is_file()} == {*reg.SHIPPED_FILES, "__init__.py"}


def test_registration_is_idempotent_byte_exact_and_newest(tmp_path):
    cache = tmp_path / "modules"
    assert not reg.is_registered(cache)
    script = reg.register_metric(cache)
    assert script.read_bytes() == (reg.shipped_metric_dir() / "neural_collapse.py").read_bytes()
    assert script.parent.name == reg.source_hash(script.read_bytes()) and len(script.parent.name) == 64
    # exactly the files docs/evaluate.md lists (what evaluate writes when it caches a module itself)
    h = script.parent.name
    assert sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file()) == sorted(
        [
            "__init__.py",
            "evaluate_modules/__init__.py",
            "evaluate_modules/metrics/__init__.py",
            "evaluate_modules/metrics/evaluate-metric--neural_collapse/__init__.py",
            f"evaluate_modules/metrics/evaluate-metric--neural_collapse/{h}/__init__.py",
            f"evaluate_modules/metrics/evaluate-metric--neural_collapse/{h}/neural_collapse.json",
            f"evaluate_modules/metrics/evaluate-metric--neural_collapse/{h}/neural_collapse.py",
        ]
    )
    assert reg.is_registered(cache)
    mtime = script.stat().st_mtime_ns
    assert reg.register_metric(cache) == script and script.stat().st_mtime_ns == mtime  # no rewrite
    # another (say, older hf_collapse) copy made newer: registration makes ours the one evaluate picks
    other = script.parents[1] / ("f" * 64)
    other.mkdir()
    (other / "neural_collapse.py").write_text("# other version\n")
    os.utime(other / "neural_collapse.py", (mtime / 1e9 + 100, mtime / 1e9 + 100))
    assert not reg.is_registered(cache)
    reg.register_metric(cache)
    assert reg.is_registered(cache) and script.stat().st_mtime > (other / "neural_collapse.py").stat().st_mtime
    # a tampered copy is rewritten
    script.write_text("# tampered\n")
    assert not reg.is_registered(cache)
    reg.register_metric(cache)
    assert reg.is_registered(cache)


@pytest.mark.slow
def test_import_writes_nothing_and_unwritable_cache_is_one_clear_error(tmp_path, capsys):
    home = tmp_path / "home"
    env = _clean_env(HF_HOME=str(home))
    code = (
        "import logging, sys, hf_collapse, hf_collapse.integrations.hub, hf_collapse.integrations.trainer\n"
        "print('filters', logging.getLogger('evaluate.loading').filters, 'evaluate' in sys.modules)\n"
    )
    out = subprocess.run([PY, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert not home.exists()  # import registered nothing
    assert "filters [] False" in out.stdout  # and left evaluate alone: no logging filter, not even imported
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    assert cli_main(["install-metric", "--modules-cache", str(blocker / "modules")]) == 1
    assert "cannot write evaluate's modules cache" in capsys.readouterr().err


def test_cli_install_check_export(tmp_path, capsys):
    cache = tmp_path / "modules"
    assert cli_main(["install-metric", "--modules-cache", str(cache), "--check"]) == 1
    out = capsys.readouterr().out
    assert "is NOT registered" in out and reg.INSTALL_HINT in out and "hf-collapse install-metric" in reg.INSTALL_HINT
    assert not cache.exists()  # --check writes nothing
    assert cli_main(["install-metric", "--modules-cache", str(cache), "--export", str(tmp_path / "space")]) == 0
    assert cli_main(["install-metric", "--modules-cache", str(cache), "--check"]) == 0
    for name in reg.SHIPPED_FILES:
        assert (tmp_path / "space" / name).read_bytes() == (METRIC_DIR / name).read_bytes()
    assert "registered" in capsys.readouterr().out


_LOAD_CODE = (
    "import evaluate, numpy as np\n"
    "nc = evaluate.load('neural_collapse')\n"
    "r = nc.compute(features=np.array([[1., 0], [3, 0], [0, 2], [0, 4]]), labels=np.array([0, 0, 1, 1]))\n"
    "print('CDNV', round(r['nc1_cdnv'], 8), type(nc).__module__)\n"
)


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "XDG_CACHE", "PYTHONPATH"))}
    env.update(HF_EVALUATE_OFFLINE="1", **extra)
    return env


@pytest.mark.slow
def test_bare_name_loads_offline_from_any_directory(tmp_path):
    """A clean HF_HOME, HF_EVALUATE_OFFLINE=1, a working directory without the metric folder."""
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    code = _LOAD_CODE
    # the explicit command (importing hf_collapse registers nothing, so the command alone must suffice)
    home1 = tmp_path / "home1"
    env1 = _clean_env(HF_HOME=str(home1))
    assert cli_main(["install-metric", "--modules-cache", str(home1 / "modules")]) == 0
    out = subprocess.run([PY, "-c", code], cwd=workdir, env=env1, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"CDNV {round(1 / 169, 8)} evaluate_modules.metrics.evaluate-metric--neural_collapse." in out.stdout


@pytest.mark.slow
def test_wheel_ships_the_registered_module(tmp_path):
    """Build the wheel from a copy of the sources; its metric files are the registered bytes."""
    src = tmp_path / "src_copy"
    shutil.copytree(REPO / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(METRIC_DIR, src / "metrics" / "neural_collapse", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "model_cards", src / "model_cards", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    out = subprocess.run(
        [
            PY,
            "-c",
            "import sys; from setuptools import build_meta as b; print(b.build_wheel(sys.argv[1]))",
            str(tmp_path / "dist"),
        ],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    wheel = tmp_path / "dist" / out.stdout.strip().splitlines()[-1]
    cache = tmp_path / "modules"
    script = reg.register_metric(cache)
    with zipfile.ZipFile(wheel) as z:
        for name in reg.SHIPPED_FILES:
            assert z.read(f"hf_collapse/evaluate_module/{name}") == (METRIC_DIR / name).read_bytes(), name
        assert z.read("hf_collapse/evaluate_module/neural_collapse.py") == script.read_bytes()
        z.extractall(tmp_path / "site")  # what `pip install` of this pure-python wheel puts in site-packages
    # installed package, clean HF_HOME, offline, another directory: the installed package registers it
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = _clean_env(PYTHONPATH=str(tmp_path / "site"), HF_HOME=str(tmp_path / "home"))
    register = "from hf_collapse.integrations.metric import register_metric; register_metric()\n"
    out = subprocess.run(
        [PY, "-c", "import hf_collapse; print(hf_collapse.__file__)\n" + register + _LOAD_CODE],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith(str(tmp_path / "site" / "hf_collapse")) and f"CDNV {round(1 / 169, 8)}" in out.stdout
    assert reg.registered_script(tmp_path / "home" / "modules").read_bytes() == script.read_bytes()


def test_statistics_configuration(evaluate_env, tmp_path):
    centres, batches = _data(seed=1)
    C, d = centres.shape
    W = torch.randn(C, d)
    full = CollapseStatistics(C, d)
    shards = [CollapseStatistics(C, d), CollapseStatistics(C, d)]
    for i, (h, y) in enumerate(batches):
        full.update(h, y)
        shards[i % 2].update(h, y)
    want = measure_collapse(full, weights=W)
    paths = []
    for i, s in enumerate(shards):
        paths.append(tmp_path / f"shard{i}.safetensors")
        s.save(paths[-1])
    nc = _load(evaluate_env, "statistics")
    assert nc.compute(statistics=full, weights=W) == pytest.approx(dict(want), rel=1e-12)  # object
    assert nc.compute(statistics=shards, weights=W) == pytest.approx(dict(want), rel=1e-9)  # objects, merged
    assert nc.compute(statistics=[str(p) for p in paths], weights=W) == pytest.approx(dict(want), rel=1e-9)
    nc.add(statistics=str(paths[0]))
    nc.add_batch(statistics=[paths[1]])
    assert nc.compute(weights=W) == pytest.approx(dict(want), rel=1e-9)  # files through the Arrow cache
    assert shards[0].num_tokens + shards[1].num_tokens == full.num_tokens  # inputs untouched by merging
    with pytest.raises(TypeError, match="compute"):
        nc.add_batch(statistics=[full])
    with pytest.raises(FileNotFoundError, match="no statistics file"):
        nc.add(statistics=str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="statistics="):
        nc.add_batch(features=np.zeros((2, d), np.float32), labels=np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="statistics="):
        nc.add()


def test_two_process_mode_equals_one_process(evaluate_env):
    centres, batches = _data(seed=2, sizes=(40, 41, 42, 43))
    C, d = centres.shape
    W = torch.randn(C, d)
    single = _load(evaluate_env)
    for h, y in batches:
        single.add_batch(features=h, labels=y)
    want = single.compute(weights=W)
    metrics = [_load(evaluate_env, num_process=2, process_id=i, experiment_id="two-proc-test") for i in range(2)]
    results, errors = [None, None], []

    def worker(i):
        try:
            for h, y in batches[i::2]:  # each process sees half of the batches
                metrics[i].add_batch(features=h, labels=y)
            results[i] = metrics[i].compute(weights=W)
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert results[1] is None
    # same samples, different order: float64 sums agree to round-off; float32 tiles to ~1e-6
    assert results[0] == pytest.approx(want, rel=1e-5)
    assert results[0]["nc1_cdnv"] == pytest.approx(want["nc1_cdnv"], rel=1e-5)


def test_clear_errors(evaluate_env):
    d = 4
    h, y = np.random.default_rng(0).standard_normal((6, d)).astype(np.float32), np.array([0, 1, 2, 0, 1, 2])
    nc = _load(evaluate_env)
    with pytest.raises(ValueError, match="labels shape"):
        nc.add_batch(features=h, labels=y[:5])
    with pytest.raises(ValueError, match=r"shape \(n, d\)"):
        nc.add_batch(features=h[0], labels=y[:1])
    with pytest.raises(TypeError, match="labels must be integers"):
        nc.add_batch(features=h, labels=y.astype(np.float32))
    with pytest.raises(ValueError, match="needs both"):
        nc.add_batch(features=h)
    nc.add_batch(features=h, labels=y)
    with pytest.raises(ValueError, match="dimension 5 but earlier batches had d=4"):
        nc.add_batch(features=np.zeros((2, 5), np.float32), labels=np.array([0, 1]))
    with pytest.raises(ValueError, match="num_classes=2"):  # label 2 outside [0, 2)
        nc.compute(num_classes=2)
    nc = _load(evaluate_env)
    with pytest.raises(ValueError, match="pass weights="):  # NC4 data without the classifier
        nc.compute(features=h, labels=y, test_features=h, test_labels=y)
    nc = _load(evaluate_env)
    with pytest.raises(ValueError, match="bias was given without weights"):
        nc.compute(features=h, labels=y, bias=np.zeros(3, np.float32))
    nc = _load(evaluate_env)
    with pytest.raises(ValueError, match="weights have 5 rows"):
        nc.compute(features=h, labels=y, num_classes=3, weights=np.zeros((5, d), np.float32))
    nc = _load(evaluate_env)
    with pytest.raises(ValueError, match="every label is -100"):
        nc.compute(features=h, labels=np.full(6, -100))
    with pytest.raises(ValueError, match="unknown configuration"):
        _load(evaluate_env, "nope")


def test_single_sample_add_and_app_imports_without_gradio(evaluate_env):
    centres, batches = _data(seed=3, sizes=(20,))
    h, y = batches[0]
    nc = _load(evaluate_env)
    for i in range(len(y)):
        nc.add(features=h[i], labels=int(y[i]))
    stats = CollapseStatistics(centres.shape[0], centres.shape[1])
    stats.update(h, y)
    assert nc.compute(num_classes=centres.shape[0]) == pytest.approx(dict(measure_collapse(stats)), rel=1e-9)
    import importlib.util

    spec = importlib.util.spec_from_file_location("nc_app", METRIC_DIR / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)  # gradio is not needed to import it
    assert callable(app.main)


def _module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("nc_module_under_test", METRIC_DIR / "neural_collapse.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# _compute's parameters that are inputs or measure_collapse arguments, not measure options
_NOT_OPTIONS = (
    "self",
    "features",
    "labels",
    "statistics",
    "weights",
    "bias",
    "num_classes",
    "test_features",
    "test_labels",
    "device",
    "ood_features",
)


def test_compute_takes_exactly_the_measure_options():
    """evaluate style: explicit keywords, whose option names and defaults are MeasureOptions' fields."""
    import dataclasses
    import inspect

    from hf_collapse import MeasureOptions

    params = inspect.signature(_module().NeuralCollapse._compute).parameters
    assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params.values())  # no *args / **kwargs
    assert set(_NOT_OPTIONS) <= set(params)
    options = [(name, p.default) for name, p in params.items() if name not in _NOT_OPTIONS]
    assert options == [(f.name, f.default) for f in dataclasses.fields(MeasureOptions)]
    # the options are described once, from the dataclass's help texts
    doc = _module()._KWARGS_DESCRIPTION
    for f in dataclasses.fields(MeasureOptions):
        assert f"    {f.name} (default {f.default!r}): {f.metadata['help']}" in doc


def test_every_option_reaches_the_core(evaluate_env):
    from hf_collapse import MeasureOptions

    centres, batches = _data(seed=4, C=9, d=6, sizes=(60, 61))
    C, d = centres.shape
    W = torch.randn(C, d)
    stats = CollapseStatistics(C, d)
    nc = _load(evaluate_env)
    for h, y in batches:
        nc.add_batch(features=h, labels=y)
        stats.update(h, y)
    values = dict(
        k=1.0,
        tile_size=3,
        dtype="float64",
        min_count=5,
        classes=[0, 1, 2, 3, 5, 7],
        global_mean="weighted",
        riesz_s=1.5,
    )
    got = nc.compute(weights=W, **values)
    want = measure_collapse(stats, weights=W, options=MeasureOptions(**values))
    assert got == pytest.approx(dict(want), rel=1e-12) and "gnc2_riesz_mean" in got
    assert got["nc1_cdnv"] != pytest.approx(measure_collapse(stats, weights=W)["nc1_cdnv"], rel=1e-6)
    # invalid options: MeasureOptions' own errors; an unknown keyword is a TypeError (no **kwargs)
    nc.add_batch(features=batches[0][0], labels=batches[0][1])
    with pytest.raises(ValueError, match="dtype must be one of"):
        nc.compute(dtype="float16")
    nc = _load(evaluate_env)
    nc.add_batch(features=batches[0][0], labels=batches[0][1])
    with pytest.raises(TypeError, match="min_cnt"):
        nc.compute(min_cnt=3)


def test_each_batch_is_one_npy_row_of_its_dtype():
    mod = _module()
    for a in (np.arange(12, dtype=np.float32).reshape(3, 4), np.ones((2, 5)), np.array([3, -100, 7], dtype=np.int64)):
        back = mod._from_npy(mod._to_npy(a))
        assert back.dtype == a.dtype and back.shape == a.shape and np.array_equal(back, a)
