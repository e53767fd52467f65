"""Issue 14's reliability matrix: what a careless or a hostile user can do to ``erase`` and
``erase-eval``, one row per case, every row through the real command line.

Each row runs ``main(argv)`` of the command in this process (a subprocess costs seconds of
imports) in a fresh folder holding a copy of a tiny SD 1.x pipeline and weights made for it,
and asserts:

- the exit status;
- that stderr is one line (progress bars aside) naming the fix, with no traceback;
- that nothing was written, every file there before is byte-identical, and no lock,
  temporary file or folder is left behind; a row that succeeds may only add the files it
  names.

The race and kill tests at the end need real processes.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections import namedtuple
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import erasure
from erasure.cli import main as erase_main
from erasure.eval.cli import main as eval_main
from erasure.weights import EditedWeights

from erasure.tiny import build_tiny_pipeline

REPO = Path(__file__).resolve().parents[1]
# ---- the workspace each row runs in ------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny") / "model"
    build_tiny_pipeline("sd1").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_weights(tiny_folder, tmp_path_factory) -> Path:
    pipe = erasure.load_pipeline(tiny_folder, device="cpu")
    return erasure.erase(pipe, "uce", "airplane").save(tmp_path_factory.mktemp("weights") / "w.safetensors")


@dataclass
class Workspace:
    """The folder a row runs in (the current directory): ``model/`` (a tiny SD 1.x
    pipeline) and ``w.safetensors`` (uce weights made for it)."""

    root: Path
    monkeypatch: pytest.MonkeyPatch
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
        return path


@pytest.fixture
def workspace(tmp_path, monkeypatch, tiny_folder, tiny_weights):
    root = tmp_path / "ws"
    shutil.copytree(tiny_folder, root / "model")
    shutil.copy(tiny_weights, root / "w.safetensors")
    monkeypatch.chdir(root)
    ws = Workspace(root, monkeypatch)
    yield ws
    for cleanup in reversed(ws.cleanups):
        cleanup()


@contextmanager
def fresh_process_logging():
    """Logging as a new process starts with it, the libraries' handlers writing to this
    test's stderr: a row sees the chatter a user would, whichever rows ran before it."""
    import huggingface_hub
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libraries = {"diffusers": diffusers_logging, "transformers": transformers_logging,
                 "huggingface_hub": huggingface_hub.utils.logging}
    root, ours = logging.getLogger(), logging.getLogger("erasure")
    saved = (root.level, list(root.handlers), ours.level, list(ours.handlers),
             {name: logging.getLogger(name).level for name in libraries})
    root.setLevel(logging.WARNING)
    ours.setLevel(logging.NOTSET)
    for handler in ours.handlers:
        ours.removeHandler(handler)
    redirected = []
    for name, library in libraries.items():
        library.set_verbosity(logging.WARNING)
        for handler in logging.getLogger(name).handlers:
            if type(handler) is logging.StreamHandler:  # the library's own, not pytest's capturing ones
                redirected.append((handler, handler.stream))
                handler.setStream(sys.stderr)
    diffusers_logging.enable_progress_bar()
    transformers_logging.enable_progress_bar()
    yield
    for handler, stream in redirected:
        handler.setStream(stream)
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]
    ours.setLevel(saved[2])
    ours.handlers[:] = saved[3]
    for name, level in saved[4].items():
        logging.getLogger(name).setLevel(level)


def snapshot(root: Path) -> dict[str, str]:
    """Every file (its hash) and folder under ``root``, hidden ones included."""
    state = {}
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        state[name] = "folder" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return state


# ---- running a command -----------------------------------------------------------------

_PROGRESS = re.compile(r"\d+%\|")


def message_lines(stderr: str) -> list[str]:
    """The lines of stderr a user reads as messages: tqdm's redrawn progress bars (ours
    for long work, the libraries' while loading) are not messages."""
    lines = []
    for line in stderr.splitlines():
        text = " ".join(s.strip() for s in line.split("\r") if s.strip() and not _PROGRESS.search(s))
        text = text.replace("\x1b[A", "").strip()
        if text:
            lines.append(text)
    return lines


def run_command(command: str, argv: list[str]) -> int:
    main = {"erase": erase_main, "erase-eval": eval_main}[command]
    try:
        return main(argv)
    except SystemExit as exit:  # argparse's own errors
        return exit.code
    except Exception as error:  # what a user would see as a traceback
        pytest.fail(f"{command} {argv} raised {type(error).__name__}: {error} (a traceback for the user)")


# ---- setups: what is on disk (or in the process) before a row's command ---------------------


def weights_variant(ws: Workspace, name: str, tensors=None, meta=None) -> None:
    """Write ``name``: ``w.safetensors`` with its tensors and metadata changed by the callables."""
    with safe_open(str(ws.root / "w.safetensors"), framework="pt") as handle:
        metadata = dict(handle.metadata())
    values = load_file(ws.root / "w.safetensors")
    if tensors:
        tensors(values)
    if meta:
        meta(metadata)
    save_file(values, str(ws.root / name), metadata=metadata)


def set_fingerprint(text: str | None):
    def change(metadata):
        if text is None:
            del metadata["base_fingerprint"]
        else:
            metadata["base_fingerprint"] = text

    return change


def nan_weights(ws):
    """nan.safetensors: w.safetensors with one tensor all NaN (as an older erase wrote with lam=.nan)."""
    weights_variant(ws, "nan.safetensors", tensors=lambda t: next(iter(t.values())).fill_(float("nan")),
                    meta=lambda m: m.update(config=json.dumps({"lam": float("nan")})))


def empty_fingerprint(ws):
    """bad.safetensors: w.safetensors with base_fingerprint set to {}."""
    weights_variant(ws, "bad.safetensors", meta=set_fingerprint("{}"))


def missing_fingerprint(ws):
    """bad.safetensors: w.safetensors without the base_fingerprint metadata key."""
    weights_variant(ws, "bad.safetensors", meta=set_fingerprint(None))


def string_fingerprint(ws):
    """bad.safetensors: w.safetensors whose base_fingerprint is a JSON string, not a mapping."""
    weights_variant(ws, "bad.safetensors", meta=set_fingerprint('"not a mapping"'))


def unparsable_fingerprint(ws):
    """bad.safetensors: w.safetensors whose base_fingerprint is not JSON."""
    weights_variant(ws, "bad.safetensors", meta=set_fingerprint("{not json"))


def short_fingerprint(ws):
    """bad.safetensors: w.safetensors whose fingerprints hold 3 numbers instead of 10."""
    def shorten(metadata):
        prints = json.loads(metadata["base_fingerprint"])
        metadata["base_fingerprint"] = json.dumps({name: values[:3] for name, values in prints.items()})

    weights_variant(ws, "bad.safetensors", meta=shorten)


def foreign_fingerprint_name(ws):
    """bad.safetensors: w.safetensors with a fingerprint for conv_in.weight, which it does not hold."""
    def add(metadata):
        prints = json.loads(metadata["base_fingerprint"])
        prints["conv_in.weight"] = next(iter(prints.values()))
        metadata["base_fingerprint"] = json.dumps(prints)

    weights_variant(ws, "bad.safetensors", meta=add)


def unfingerprinted_tensor(ws):
    """bad.safetensors: w.safetensors plus a zeroed conv_in.weight (a real UNet parameter) without a fingerprint."""
    # A real UNet parameter with no fingerprint entry: it would be applied unchecked.
    conv_in = load_file(ws.root / "model/unet/diffusion_pytorch_model.safetensors")["conv_in.weight"]
    weights_variant(ws, "bad.safetensors", tensors=lambda t: t.update({"conv_in.weight": torch.zeros_like(conv_in)}))


def other_base_model(ws):
    """model/ replaced by a tiny pipeline of another seed (python -m erasure.tiny model --seed 7)."""
    shutil.rmtree(ws.root / "model")
    build_tiny_pipeline("sd1", seed=7).save_pretrained(ws.root / "model")


def random_bytes(name):
    def setup(ws):
        ws.write(name, bytes(range(128, 256)) * 4)

    setup.__doc__ = f"{name}: 512 bytes that are not UTF-8 (0x80..0xff, four times)."
    return setup


def model_index(content: str):
    def setup(ws):
        ws.write("model/model_index.json", content)

    setup.__doc__ = f"model/model_index.json holds `{content}`."
    return setup


def wrong_pipeline_class(ws):
    """model/model_index.json names FluxPipeline."""
    index = json.loads((ws.root / "model/model_index.json").read_text())
    ws.write("model/model_index.json", json.dumps({**index, "_class_name": "FluxPipeline"}))


def unet_replaced_by_weights(ws):
    """model/unet/diffusion_pytorch_model.safetensors replaced by w.safetensors."""
    shutil.copy(ws.root / "w.safetensors", ws.root / "model/unet/diffusion_pytorch_model.safetensors")


def truncated_text_encoder(ws):
    """model/text_encoder/model.safetensors with its last 1000 bytes cut off."""
    path = ws.root / "model/text_encoder/model.safetensors"
    path.write_bytes(path.read_bytes()[:-1000])


def custom_code_scheduler(ws):
    """model/model_index.json names the scheduler ["evil_module", "EvilScheduler"]; evil_module.py in the folder (importable) would create ./pwned."""
    # A module that leaves a mark if imported; diffusers must refuse to import it.
    ws.write("evil_module.py", "from pathlib import Path\nPath('pwned').write_text('ran')\n")
    index = json.loads((ws.root / "model/model_index.json").read_text())
    ws.write("model/model_index.json", json.dumps({**index, "scheduler": ["evil_module", "EvilScheduler"]}))
    ws.monkeypatch.syspath_prepend(str(ws.root))


class _Payload:
    """Unpickling this runs code: a pickled checkpoint must never be unpickled."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


def pickled_checkpoint(ws):
    """model.ckpt: a pickle that runs `touch pwned` when unpickled."""
    import pickle

    ws.write("model.ckpt", pickle.dumps(_Payload()))


def pickled_unet(ws):
    """model/unet holds only diffusion_pytorch_model.bin, a pickle that runs `touch pwned`."""
    import pickle

    (ws.root / "model/unet/diffusion_pytorch_model.safetensors").unlink()
    ws.write("model/unet/diffusion_pytorch_model.bin", pickle.dumps(_Payload()))


def existing(*names):
    def setup(ws):
        for name in names:
            if name.endswith("/"):
                (ws.root / name).mkdir(parents=True)
            else:
                ws.write(name, f"an earlier result: {name}\n")

    setup.__doc__ = "existing: " + ", ".join(names) + " (a name ending in / is a folder)."
    return setup


def read_only_folder(ws):
    """ro/: a read-only folder (as root: a read-only tmpfs mount)."""
    folder = ws.root / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        ws.cleanups.append(lambda: folder.chmod(0o755))
        return
    # root writes through permissions: only a read-only mount is read-only to it
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("a read-only folder needs a non-root user or permission to mount")
    ws.cleanups.append(lambda: subprocess.run(["umount", str(folder)], check=True))


def full_disk(ws):
    """the disk has 1 MiB free (in-process: shutil.disk_usage reports it; by hand: a 1 MiB tmpfs)."""
    usage = namedtuple("usage", "total used free")
    ws.monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 2**20, 2**20))


def output_held_by_another_run(ws):
    """another process holds the flock on .out.safetensors.lock (an erase to out.safetensors is running)."""
    import fcntl

    handle = open(ws.root / ".out.safetensors.lock", "a+")
    handle.write("pid 4242\n")
    handle.flush()
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another open file: it conflicts like another process
    ws.cleanups.append(handle.close)


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def leftovers_of_a_killed_run(ws):
    """a killed run's leftovers: .out.safetensors.lock and .out.safetensors.<host>-<dead pid>.x1y2.tmp."""
    ws.write(".out.safetensors.lock", "pid 1\n")
    ws.write(f".out.safetensors.{socket.gethostname()}-{dead_pid()}.x1y2.tmp", b"half a file")


def control_in_concepts_file(ws):
    """concepts.txt: a line holding an ANSI escape (ESC [31m)."""
    ws.write("concepts.txt", "airplane\nred \x1b[31mcar\n")


def nan_in_yaml(ws):
    """nan.yaml: `lam: .nan`."""
    ws.write("nan.yaml", "lam: .nan\n")


def hostile_yaml(ws):
    """evil.yaml: `lam: !!python/object/apply:os.system ['touch pwned']`."""
    ws.write("evil.yaml", "lam: !!python/object/apply:os.system ['touch pwned']\n")


def text_file(name: str, text: str):
    def setup(ws):
        ws.write(name, text)

    setup.__doc__ = f"{name}: {text!r}"
    return setup


ESD_FAST = ["--set", "iterations=2", "--set", "ddim_steps=2", "--set", "lr=1e-3"]


def esd_run(output: str, *extra: str) -> list[str]:
    return ["--method", "esd", "--concepts", "airplane", "--model", "model", "--device", "cpu", "--output", output,
            *ESD_FAST, *extra]


def earlier_esd_run_with_checkpoint(ws):
    """an earlier run with another seed: erase --method esd --concepts airplane ... --output a.safetensors --checkpoint-every 2 --set seed=1 (ESD_FAST)."""
    assert erase_main(esd_run("a.safetensors", "--checkpoint-every", "2", "--set", "seed=1")) == 0


def interrupted_esd_run(ws):
    """an interrupted run: the same command ran with its checkpoint written, then a.safetensors removed."""
    assert erase_main(esd_run("a.safetensors", "--checkpoint-every", "2")) == 0
    (ws.root / "a.safetensors").unlink()  # as if killed after its checkpoint


def straight_and_half_esd_runs(ws):
    """straight.safetensors: ESD 4 iterations; resumed.checkpoint/: ESD 2 iterations checkpointed, resumed.safetensors removed (the state an interrupted run leaves)."""
    assert erase_main(esd_run("straight.safetensors", "--set", "iterations=4")) == 0
    assert erase_main(esd_run("resumed.safetensors", "--checkpoint-every", "2")) == 0
    (ws.root / "resumed.safetensors").unlink()  # as if killed after its checkpoint


def resumed_equals_straight(ws):
    resumed, straight = (load_file(ws.root / n) for n in ("resumed.safetensors", "straight.safetensors"))
    assert resumed.keys() == straight.keys() and all(torch.equal(resumed[k], straight[k]) for k in straight)


# ---- the table -------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One row.

    Attributes:
        id: ``d<defect>-...`` for issue 14's nine defects, ``ok-...`` for cases that held.
        command: ``erase`` or ``erase-eval``.
        argv: its arguments (the current directory is the workspace).
        code: the exit status.
        message: a fragment the one stderr line must hold (exit 2).
        setup: prepares the workspace before the snapshot.
        creates: for exit 0, glob patterns of the only paths it may add.
        changes: glob patterns of the only existing paths it may change or remove.
        removes: glob patterns of existing paths it must remove (leftovers of a killed run).
        warns: a fragment of the warning it must log.
        verify: more checks on the workspace afterwards.
    """

    id: str
    command: str
    argv: list[str]
    code: int
    message: str = ""
    setup: Callable[[Workspace], None] | None = None
    creates: tuple[str, ...] = ()
    changes: tuple[str, ...] = ()
    removes: tuple[str, ...] = ()
    warns: str = ""
    verify: Callable[[Workspace], None] | None = None


def erase(*args: str, output: str = "out.safetensors") -> list[str]:
    """``erase`` on the workspace's tiny model (uce unless ``--method`` is given)."""
    method = [] if "--method" in args else ["--method", "uce"]
    concepts = [] if {"--concepts", "--concepts-file"} & set(args) else ["--concepts", "airplane"]
    return [*method, *concepts, "--model", "model", "--device", "cpu", "--output", output, *args]


def evaluate(*args: str, weights: str = "w.safetensors", prompts: str = "shapes/circle") -> list[str]:
    """``erase-eval`` of ``weights`` on the workspace's tiny model, one row, one step."""
    return ["--prompts", prompts, "--model", "model", "--weights", weights, "--metrics", "world", "--limit", "1",
            "--steps", "1", "--output", "eval", "--no-html", "--device", "cpu", *args]


CASES = [
    # 1. Non-finite settings wrote an all-NaN model with exit 0; erase-eval scored it perfect.
    Case("d1-uce-lam-nan", "erase", erase("--set", "lam=.nan"), 2, "lam"),
    Case("d1-uce-lam-inf", "erase", erase("--set", "lam=.inf"), 2, "lam"),
    Case("d1-uce-lam-nan-from-yaml", "erase", erase("--config", "nan.yaml"), 2, "lam", setup=nan_in_yaml),
    Case("d1-mace-lam-nan", "erase", erase("--method", "mace", "--set", "lam=.nan", "--set", "train_steps=0",
                                            "--set", "images_per_concept=1"), 2, "lam"),
    Case("d1-uce-lam-zero", "erase", erase("--set", "lam=0"), 2, "lam"),
    Case("d1-uce-lam-negative", "erase", erase("--set", "lam=-1"), 2, "lam"),
    Case("d1-rece-reg-negative", "erase", erase("--method", "rece", "--set", "reg=-1", "--set", "validate=none"), 2, "reg"),
    Case("d1-eval-refuses-nan-weights", "erase-eval", evaluate(weights="nan.safetensors"), 2, "NaN", setup=nan_weights),
    # 2. ESD checkpoints were silently overwritten by the next run.
    Case("d2-esd-new-run-keeps-earlier-checkpoint", "erase", esd_run("b.safetensors", "--checkpoint-every", "2"), 0,
         setup=earlier_esd_run_with_checkpoint, creates=("b.safetensors", "b.checkpoint", "b.checkpoint/*")),
    Case("d2-esd-found-checkpoint-needs-resume-or-overwrite", "erase", esd_run("a.safetensors", "--checkpoint-every", "2"),
         2, "--resume", setup=interrupted_esd_run),
    # 3. The base check covered only the tensors the fingerprint listed.
    Case("d3-empty-fingerprint", "erase-eval", evaluate(weights="bad.safetensors"), 2, "no base fingerprint",
         setup=empty_fingerprint),
    Case("d3-missing-fingerprint", "erase-eval", evaluate(weights="bad.safetensors"), 2, "no base fingerprint",
         setup=missing_fingerprint),
    Case("d3-unfingerprinted-real-tensor", "erase-eval", evaluate(weights="bad.safetensors"), 2,
         "no base fingerprint for conv_in.weight", setup=unfingerprinted_tensor),
    Case("d3-fingerprint-not-a-mapping", "erase-eval", evaluate(weights="bad.safetensors"), 2, "malformed",
         setup=string_fingerprint),
    Case("d3-fingerprint-not-json", "erase-eval", evaluate(weights="bad.safetensors"), 2, "malformed",
         setup=unparsable_fingerprint),
    Case("d3-fingerprint-too-short", "erase-eval", evaluate(weights="bad.safetensors"), 2, "malformed",
         setup=short_fingerprint),
    Case("d3-fingerprint-of-a-tensor-not-in-the-file", "erase-eval", evaluate(weights="bad.safetensors"), 2,
         "do not hold", setup=foreign_fingerprint_name),
    Case("d3-eval-no-check-base-applies-unchecked", "erase-eval", evaluate("--no-check-base", weights="bad.safetensors"),
         0, setup=empty_fingerprint, creates=("eval", "eval/*", "eval/*/*")),
    # 4. Two writers of one output both reported success (see also the process tests below).
    Case("d4-output-held-by-a-running-erase", "erase", erase(), 2, "being written by another run",
         setup=output_held_by_another_run),
    Case("d4-leftovers-of-a-killed-run-do-not-block", "erase", erase(), 0, setup=leftovers_of_a_killed_run,
         creates=("out.safetensors",), removes=(".out.safetensors.lock", ".out.safetensors.*.tmp")),
    # 5. Output problems surfaced only after the work, as tracebacks.
    Case("d5-read-only-folder", "erase", erase(output="ro/out.safetensors"), 2, "cannot write", setup=read_only_folder),
    Case("d5-parent-is-a-file", "erase", erase(output="file/out.safetensors"), 2, "is a file, not a folder",
         setup=existing("file")),
    Case("d5-grandparent-is-a-file", "erase", erase(output="file/new/out.safetensors"), 2, "is a file, not a folder",
         setup=existing("file")),
    Case("d5-output-is-a-folder", "erase", erase(output="dir.safetensors"), 2, "is a folder",
         setup=existing("dir.safetensors/")),
    Case("d5-output-is-a-folder-even-with-overwrite", "erase", erase("--overwrite", output="dir.safetensors"), 2,
         "is a folder", setup=existing("dir.safetensors/")),
    Case("d5-full-disk", "erase", erase(), 2, "free", setup=full_disk),
    Case("d5-second-erase-refused-before-loading", "erase",
         erase("--model", "no-such-model/"), 2, "already exists", setup=existing("out.safetensors")),
    Case("d5-export-folder-exists", "erase", erase("--export", "diffusers"), 2, "out-diffusers already exists",
         setup=existing("out-diffusers/")),
    Case("d5-export-target-is-a-file", "erase", erase("--export", "diffusers", "--overwrite"), 2, "not a folder",
         setup=existing("out-diffusers")),
    Case("d5-export-lora-exists", "erase", erase("--method", "mace", "--export", "lora"), 2,
         "out-lora.safetensors already exists", setup=existing("out-lora.safetensors")),
    Case("d5-export-given-twice", "erase", erase("--export", "diffusers", "--export", "diffusers"), 2, "given twice"),
    Case("d5-output-would-replace-the-models-unet", "erase",
         erase("--overwrite", output="model/unet/diffusion_pytorch_model.safetensors"), 2, "inside the model folder"),
    Case("d5-missing-folders-are-created", "erase", erase(output="new/sub/out.safetensors"), 0,
         creates=("new", "new/sub", "new/sub/out.safetensors")),
    Case("d5-failed-run-removes-the-folders-it-made", "erase", erase(output="new/sub/out.safetensors"), 2,
         "not valid JSON", setup=model_index("{not json")),
    # 6. Tracebacks where a one-line error was promised.
    Case("d6-rece-epochs-zero", "erase", erase("--method", "rece", "--set", "epochs=0", "--set", "validate=none"), 2,
         "epochs"),
    Case("d6-rece-validation-seeds-zero", "erase", erase("--method", "rece", "--set", "validation_seeds=0"), 2,
         "validation_seeds"),
    Case("d6-random-bytes-config", "erase", erase("--config", "junk.yaml"), 2, "not UTF-8 text",
         setup=random_bytes("junk.yaml")),
    Case("d6-folder-as-config", "erase", erase("--config", "model"), 2, "is a folder, not a config file"),
    Case("d6-random-bytes-concepts-file", "erase", erase("--concepts-file", "junk.txt"), 2, "not UTF-8 text",
         setup=random_bytes("junk.txt")),
    Case("d6-empty-concepts-file", "erase", erase("--concepts-file", "empty.txt"), 2, "lists no concepts",
         setup=text_file("empty.txt", "# only a comment\n\n")),
    Case("d6-model-index-not-json", "erase", erase(), 2, "model_index.json is not valid JSON",
         setup=model_index("{not json")),
    Case("d6-model-index-random-bytes", "erase", erase(), 2, "model_index.json is not valid JSON",
         setup=random_bytes("model/model_index.json")),
    Case("d6-model-index-not-an-object", "erase", erase(), 2, "must hold a JSON object", setup=model_index("[1, 2]")),
    Case("d6-model-index-wrong-pipeline-class", "erase", erase(), 2, "names the pipeline 'FluxPipeline'",
         setup=wrong_pipeline_class),
    Case("d6-unet-replaced-by-erase-weights", "erase", erase(), 2, "is an erasure weights file, not a unet checkpoint",
         setup=unet_replaced_by_weights),
    Case("d6-truncated-text-encoder", "erase", erase(), 2, "could not load the pipeline", setup=truncated_text_encoder),
    Case("d6-erase-weights-given-as-the-model", "erase", erase("--model", "w.safetensors"), 2,
         "is an erasure weights file, not a model"),
    Case("d6-device-cuda-without-gpu", "erase", erase("--device", "cuda"), 2, "asks for a CUDA GPU"),
    Case("d6-device-banana", "erase", erase("--device", "banana"), 2, "unknown device 'banana'"),
    Case("d6-device-meta", "erase", erase("--device", "meta"), 2, "not supported"),
    Case("d6-seed-negative", "erase", erase("--seed", "-1"), 2, "--seed -1"),
    Case("d6-seed-too-large", "erase", erase("--seed", str(2**70)), 2, "--seed"),
    Case("d6-unknown-dtype-is-one-line", "erase", erase("--dtype", "float8"), 2, "invalid choice: 'float8'"),
    Case("d6-esd-lr-nan", "erase", esd_run("out.safetensors", "--set", "lr=.nan"), 2, "lr"),
    Case("d6-eval-csv-seed-1e999", "erase-eval", evaluate(prompts="prompts.csv"), 2, "seed",
         setup=text_file("prompts.csv", "prompt,class,evaluation_seed\na red circle,circle,1e999\n")),
    Case("d6-eval-resolution-negative", "erase-eval", evaluate("--resolution", "-8"), 2, "resolution"),
    Case("d6-eval-device-banana", "erase-eval", evaluate("--device", "banana"), 2, "banana"),
    Case("d6-eval-weights-random-bytes", "erase-eval", evaluate(weights="junk.safetensors"), 2, "not a readable",
         setup=random_bytes("junk.safetensors")),
    # 7. erase-eval did not check guidance.
    Case("d7-eval-guidance-nan", "erase-eval", evaluate("--guidance", "nan"), 2, "guidance"),
    Case("d7-eval-csv-guidance-nan", "erase-eval", evaluate(prompts="prompts.csv"), 2, "guidance",
         setup=text_file("prompts.csv", "prompt,class,evaluation_guidance\na red circle,circle,nan\n")),
    Case("d7-eval-guidance-negative", "erase-eval", evaluate("--guidance", "-5"), 2, "guidance"),
    # 8. Concept text was not cleaned.
    Case("d8-ansi-escape", "erase", erase("--concepts", "\x1b[31mred\x1b[0m car"), 2, "U+001B"),
    Case("d8-c1-control", "erase", erase("--concepts", "car\x9b"), 2, "U+009B"),
    Case("d8-newline-inside-a-concept", "erase", erase("--concepts", "cat\ndog"), 2, "U+000A"),
    Case("d8-bidi-override", "erase", erase("--concepts", "\u202erac"), 2, "U+202E"),
    Case("d8-control-in-concepts-file", "erase", erase("--concepts-file", "concepts.txt"), 2, "U+001B",
         setup=control_in_concepts_file),
    Case("d8-control-in-preserve", "erase", erase("--preserve", "a dog\x07"), 2, "U+0007"),
    Case("d8-two-arrows", "erase", erase("--concepts", "cat->dog->bird"), 2, "more than one '->'"),
    Case("d8-long-concept-warns", "erase", erase("--concepts", "airplane " * 1200), 0, creates=("out.safetensors",),
         warns="tokens long"),
    # 9. Misleading messages.
    Case("d9-wrong-base-names-the-flag", "erase-eval", evaluate(), 2, "--no-check-base", setup=other_base_model),
    Case("d9-esd-nan-guidance-names-guidance", "erase", esd_run("out.safetensors", "--set", "negative_guidance=.nan"), 2,
         "negative_guidance"),
    # Cases that held before issue 14; they must keep holding.
    Case("ok-hostile-yaml-never-runs", "erase", erase("--config", "evil.yaml"), 2, "not valid YAML", setup=hostile_yaml),
    Case("ok-pickled-checkpoint-never-unpickled", "erase", erase("--model", "model.ckpt"), 2, "only .safetensors",
         setup=pickled_checkpoint),
    Case("ok-pickled-unet-never-unpickled", "erase", erase(), 2, "could not load the pipeline", setup=pickled_unet),
    Case("ok-custom-code-scheduler-never-imported", "erase", erase(), 2, "evil_module", setup=custom_code_scheduler),
    Case("ok-existing-output-untouched", "erase", erase(), 2, "already exists", setup=existing("out.safetensors")),
    Case("ok-overwrite-replaces", "erase", erase("--overwrite"), 0, setup=existing("out.safetensors"),
         changes=("out.safetensors",)),
    Case("ok-concept-never-becomes-a-path", "erase", ["--method", "uce", "--concepts", "../../evil", "--model", "model",
                                                      "--device", "cpu"], 0,
         creates=("outputs", "outputs/uce-evil.safetensors")),
    Case("ok-esd-resumed-equals-uninterrupted", "erase",
         esd_run("resumed.safetensors", "--resume", "--set", "iterations=4", "--checkpoint-every", "2"), 0,
         setup=straight_and_half_esd_runs, creates=("resumed.safetensors", "resumed.checkpoint/*"),
         changes=("resumed.checkpoint/*",), removes=("resumed.checkpoint/state-*",), verify=resumed_equals_straight),
    Case("ok-missing-model", "erase", erase("--model", "no/such/folder"), 2, "not found"),
    Case("ok-unknown-config-key", "erase", erase("--set", "lamda=1"), 2, "unknown config key 'lamda'"),
    Case("ok-concept-given-twice", "erase", erase("--concepts", "car, Car"), 2, "given twice"),
]


def _matches(path: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(path, pattern) for pattern in patterns)


def unexpected_writes(case: Case, before: dict[str, str], after: dict[str, str]) -> list[str]:
    """What the command wrote that it must not have: anything at all for a refused
    command; for one that succeeds, paths outside ``creates``, changes outside
    ``changes``, and leftovers in ``removes`` still there."""
    added = sorted(set(after) - set(before))
    changed = sorted(p for p in before if before[p] != after.get(p))
    if case.code != 0:
        return [f"added {p}" for p in added] + [f"changed or removed {p}" for p in changed]
    return ([f"added {p}" for p in added if not _matches(p, case.creates)]
            + [f"changed or removed {p}" for p in changed if not _matches(p, case.changes + case.removes)]
            + [f"left {p}" for p in before if p in after and _matches(p, case.removes)])


def _param(case: Case):
    marks = []
    if case.id == "d6-device-cuda-without-gpu" and torch.cuda.is_available():
        marks.append(pytest.mark.skip(reason="this machine has a GPU"))
    return pytest.param(case, id=case.id, marks=marks)


def test_the_table_covers_the_issue():
    assert len(CASES) >= 45 and len({c.id for c in CASES}) == len(CASES)
    assert {c.id.split("-")[0] for c in CASES} == {f"d{n}" for n in range(1, 10)} | {"ok"}


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_case(case: Case, workspace: Workspace, capsys, caplog):
    if case.setup:
        case.setup(workspace)
    capsys.readouterr()
    caplog.clear()
    before = snapshot(workspace.root)

    with fresh_process_logging():
        code = run_command(case.command, case.argv)

    stderr = capsys.readouterr().err
    # A record that reached the root logger is printed by a new process too (by the
    # handler logging.basicConfig() adds, or logging's last resort), unless ours did already.
    stderr += "".join(f"{r.levelname}: {r.getMessage()}\n" for r in caplog.records
                      if r.levelno >= logging.WARNING and r.getMessage() not in stderr)
    lines = message_lines(stderr)
    after = snapshot(workspace.root)
    assert "Traceback" not in stderr
    assert code == case.code, f"exit {code}, stderr: {lines}"
    if case.code == 0:
        assert not [line for line in lines if "error" in line.lower()], lines
    else:
        assert len(lines) == 1, f"stderr is not one line: {lines}"
        assert lines[0].startswith(f"{case.command}: error: "), lines[0]
        assert case.message in lines[0], lines[0]
    assert not unexpected_writes(case, before, after)
    if case.warns:
        assert case.warns in stderr
    if case.verify:
        case.verify(workspace)


# ---- races and kills: real processes ------------------------------------------------------


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def _environment() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


SAVE_AT_TIMES = """
    import sys, time, torch
    from erasure.weights import EditedWeights
    from erasure import ErasureError
    value, trials, folder = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    edited = EditedWeights({"x": torch.full((4096, 1024), value)}, "uce", ["c"], {}, "base",
                           {"x": [0.0] * 10})
    edited.metadata()  # imports diffusers now, not inside the first save
    print("ready", flush=True)
    start = float(sys.stdin.readline())
    for trial in range(trials):
        time.sleep(max(0.0, start + 0.3 * trial - time.time() - 0.01))
        while time.time() < start + 0.3 * trial:  # the last 10 ms spinning: both start within microseconds
            pass
        try:
            edited.save(f"{folder}/{trial}.safetensors")
            print(trial, "saved", flush=True)
        except ErasureError as error:
            print(trial, "error", error, flush=True)
"""


def test_two_processes_saving_the_same_file_at_once_one_wins(tmp_path):
    trials = 12
    writers = [subprocess.Popen(_python(SAVE_AT_TIMES) + [str(v), str(trials), str(tmp_path)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_environment())
               for v in (1.0, 2.0)]
    for writer in writers:  # both have imported torch and built their weights
        assert writer.stdout.readline().strip() == "ready", writer.stderr.read()[-2000:]
    start = time.time() + 0.5
    for writer in writers:
        writer.stdin.write(f"{start}\n")
        writer.stdin.flush()
    results = [w.communicate(timeout=120) for w in writers]
    assert all(w.returncode == 0 for w in writers), [r[1][-2000:] for r in results]
    outcomes = [dict(line.split(" ", 1) for line in out.splitlines()) for out, _ in results]
    for trial in range(trials):
        first, second = outcomes[0][str(trial)], outcomes[1][str(trial)]
        assert sorted([first, second])[1] == "saved" and sorted([first, second])[0].startswith("error"), (first, second)
        loser = first if first != "saved" else second
        assert "already exists: pass --overwrite" in loser and "\n" not in loser
        winner = 1.0 if first == "saved" else 2.0
        assert torch.equal(load_file(tmp_path / f"{trial}.safetensors")["x"], torch.full((4096, 1024), winner))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{t}.safetensors" for t in range(trials))


SAVE_AND_STALL = """
    import sys, time, torch
    import erasure.weights as weights
    from safetensors.torch import save as serialize

    path, stage = sys.argv[1], sys.argv[2]

    def stalled(tensors, tmp, metadata=None):  # writes all or half of the file, then waits to be killed
        data = serialize(tensors, metadata=metadata)
        with open(tmp, "wb") as file:
            file.write(data if stage == "written" else data[: len(data) // 2])
        print(stage, flush=True)
        time.sleep(600)

    weights.save_file = stalled
    edited = weights.EditedWeights({"x": torch.full((64, 64), 3.0)}, "uce", ["c"], {}, "base", {"x": [0.0] * 10})
    edited.save(path, overwrite=True)
"""


@pytest.mark.parametrize("old, stage", [(True, "half"), (False, "written")],
                         ids=["mid-write-over-an-old-file", "written-not-yet-published-new-file"])
def test_a_save_killed_midway_leaves_the_old_file_or_none(tmp_path, tiny_weights, old, stage):
    path = tmp_path / "out.safetensors"
    if old:
        shutil.copy(tiny_weights, path)
    previous = path.read_bytes() if old else None
    writer = subprocess.Popen(_python(SAVE_AND_STALL) + [str(path), stage], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_environment())
    assert writer.stdout.readline().strip() == stage, writer.stderr.read()[-2000:]
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert writer.returncode == -signal.SIGKILL
    assert len(list(tmp_path.glob(".out.safetensors.*.tmp"))) == 1  # what the killed writer left
    if old:
        assert path.read_bytes() == previous
    else:
        assert not path.exists()
    # The leftover blocks nothing: the next save succeeds and removes it.
    EditedWeights.load(tiny_weights).save(path, overwrite=old)
    assert EditedWeights.load(path).tensors.keys() == EditedWeights.load(tiny_weights).tensors.keys()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors"]


def test_a_disk_that_fills_up_while_saving_is_one_line_and_leaves_nothing(tmp_path, tiny_weights):
    folder = tmp_path / "small"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("needs permission to mount a small tmpfs")
    try:
        edited = EditedWeights.load(tiny_weights)
        big = EditedWeights({"x": torch.ones(1024, 1024)}, "uce", ["c"], {}, "base", {"x": [0.0] * 10})
        with pytest.raises(erasure.ErasureError, match="No space left on device") as error:
            big.save(folder / "out.safetensors")
        assert "\n" not in str(error.value) and list(folder.iterdir()) == []
        edited.save(folder / "out.safetensors")  # and a file that fits is still written
        assert [p.name for p in folder.iterdir()] == ["out.safetensors"]
    finally:
        subprocess.run(["umount", str(folder)], check=True)
