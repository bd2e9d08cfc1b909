"""Offline COCO caption metrics with pycocoevalcap (BLEU-1..4, METEOR, ROUGE_L, CIDEr; SPICE when possible).

We build the scorer list ourselves instead of calling ``COCOEvalCap.evaluate()``: that method constructs
``Spice()`` before scoring anything, and ``Spice()`` downloads Stanford CoreNLP 3.6.0 on first use, so
offline it fails with no scores at all. SPICE is therefore run only when its jars are already present,
and otherwise reported as unavailable (NaN plus a reason).

METEOR and the PTB tokenizer run on the JVM, so Java is required; we check for it up front to give a
clear error instead of a ``FileNotFoundError`` from ``subprocess``.
"""

from __future__ import annotations

import math
import shutil
import threading
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ivl_ros.errors import IvlError, OptionError

METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
JAVA_HINT = "install a Java runtime (Debian: apt-get install default-jre-headless; see requirements/apt.txt)"


@dataclass
class SpiceStatus:
    available: bool
    reason: str = ""


@dataclass
class CaptionScores:
    """Corpus scores (``metrics``, SPICE included, NaN when unavailable) and per-image scores."""

    metrics: dict[str, float]
    per_image: dict[str, dict[Hashable, float]]
    spice: SpiceStatus
    num_images: int
    tokenized: bool
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        """Strict-JSON form: NaN becomes null."""
        return {name: (None if math.isnan(v) else v) for name, v in self.metrics.items()}


def require_java() -> str:
    """The path of ``java``, or an IvlError saying how to install it."""
    java = shutil.which("java")
    if java is None:
        raise IvlError(
            "COCO caption scoring needs Java (METEOR and the PTB tokenizer run on the JVM), "
            f"but `java` was not found on PATH; {JAVA_HINT}"
        )
    return java


def _require_pycocoevalcap() -> Path:
    try:
        import pycocoevalcap
    except ImportError:
        raise IvlError("COCO caption scoring needs pycocoevalcap: pip install -r requirements/eval.txt") from None
    # A namespace package (no __init__.py): its folder comes from __path__, not __file__.
    return Path(next(iter(pycocoevalcap.__path__))).resolve()


def spice_status() -> SpiceStatus:
    """Whether SPICE can run without a download (its CoreNLP 3.6.0 jars are present)."""
    lib = _require_pycocoevalcap() / "spice" / "lib"
    needed = [lib / "stanford-corenlp-3.6.0.jar", lib / "stanford-corenlp-3.6.0-models.jar"]
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        return SpiceStatus(
            False,
            f"SPICE needs Stanford CoreNLP 3.6.0 ({', '.join(missing)}) in {lib}; pycocoevalcap "
            "would download it from nlp.stanford.edu at first use, which is not done offline",
        )
    return SpiceStatus(True)


# The METEOR JVM takes ~8 s to start (it loads a 62 MB paraphrase table) and then scores in milliseconds,
# so one process is kept per Python process and reused by every scoring call.
_meteor_lock = threading.Lock()
_meteor = None


def _meteor_score(gts: dict, res: dict) -> tuple[float, list[float]]:
    global _meteor
    from pycocoevalcap.meteor.meteor import Meteor

    with _meteor_lock:
        if _meteor is None or _meteor.meteor_p.poll() is not None:
            _meteor = Meteor()
        try:
            return _meteor.compute_score(gts, res)
        except Exception as exc:
            # The wrapper leaves its own lock held and its pipe in an unknown state on errors: start afresh next time.
            _meteor = None
            raise IvlError(
                f"METEOR scoring failed ({type(exc).__name__}: {exc}); is `java` a working Java 8+ runtime?"
            ) from None


def _clean(text: str) -> str:
    # METEOR and the PTB tokenizer talk to Java line by line: a newline/CR inside a caption would shift every
    # following score. Collapsing whitespace is harmless for the metrics, which all split on whitespace.
    return " ".join(text.split())


def _ptb_tokenize(captions: Mapping[Hashable, Sequence[str]]) -> dict[Hashable, list[str]]:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # A blank caption at the end of the tokenizer's input file would be dropped; "." tokenizes to "" anyway.
    data = {k: [{"caption": _clean(c) or "."} for c in caps] for k, caps in captions.items()}
    try:
        out = PTBTokenizer().tokenize(data)
    except OSError as exc:  # it writes its input file next to its jar, inside the installed package
        raise IvlError(
            f"the PTB tokenizer (pycocoevalcap, Java) could not run: {exc}; pycocoevalcap's "
            "tokenizer folder must be writable"
        ) from None
    if set(out) != set(data) or any(len(out[k]) != len(data[k]) for k in data):
        raise IvlError("the PTB tokenizer returned a different number of captions than it was given")
    return out


def _check_inputs(references: Mapping[Hashable, Sequence[str]], predictions: Mapping[Hashable, str]) -> None:
    if not predictions:
        raise IvlError("no predictions to score: the prediction list is empty")
    missing = [k for k in predictions if k not in references]
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (" ..." if len(missing) > 5 else "")
        raise IvlError(f"{len(missing)} predicted image id(s) have no reference captions: {shown}")
    for k, caption in predictions.items():
        if not isinstance(caption, str):
            raise IvlError(f"prediction for image {k} is {type(caption).__name__}, expected a caption string")
        refs = references[k]
        if isinstance(refs, str) or not refs or not all(isinstance(r, str) for r in refs):
            raise IvlError(f"references for image {k} must be a non-empty list of strings, got {refs!r}")


def score_captions(
    references: Mapping[Hashable, Sequence[str]],
    predictions: Mapping[Hashable, str],
    *,
    tokenize: bool = True,
    spice: bool | None = None,
) -> CaptionScores:
    """Score one caption per image against its references, the way coco-caption does.

    ``tokenize=True`` runs the PTB tokenizer (lower-cases, strips punctuation) as ``COCOEvalCap`` does;
    ``tokenize=False`` passes raw strings (nlg-eval's convention). Only the predicted images are scored.
    ``spice``: None = when its jars are present, False = never, True = required (IvlError if impossible).
    """
    _check_inputs(references, predictions)
    if spice is not None and not isinstance(spice, bool):
        raise OptionError(f"spice must be True, False or None, got {spice!r}")
    require_java()
    _require_pycocoevalcap()
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    ids = list(predictions)
    if tokenize:
        # One tokenizer JVM for references and predictions together (it works line by line, so this equals
        # COCOEvalCap's two calls). The scorers return per-image lists in key order: keep it equal to ``ids``.
        tok = _ptb_tokenize(
            {**{("ref", k): list(references[k]) for k in ids}, **{("hyp", k): [predictions[k]] for k in ids}}
        )
        gts = {k: tok[("ref", k)] for k in ids}
        res = {k: tok[("hyp", k)] for k in ids}
    else:
        gts = {k: [_clean(r) for r in references[k]] for k in ids}
        res = {k: [_clean(predictions[k])] for k in ids}

    metrics: dict[str, float] = {}
    per_image: dict[str, dict[Hashable, float]] = {}
    bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        metrics[f"Bleu_{n + 1}"] = float(bleu[n])
        per_image[f"Bleu_{n + 1}"] = dict(zip(ids, map(float, bleu_each[n]), strict=True))
    for name, scorer in (
        ("METEOR", _meteor_score),
        ("ROUGE_L", Rouge().compute_score),
        ("CIDEr", Cider().compute_score),
    ):
        score, each = scorer(gts, res)
        metrics[name] = float(score)
        per_image[name] = dict(zip(ids, map(float, each), strict=True))

    notes = []
    if len(ids) == 1:
        notes.append("CIDEr is 0 on a single image: its IDF is computed over the scored images")
    status = spice_status() if spice is not False else SpiceStatus(False, "SPICE was not requested")
    if spice is True and not status.available:
        raise IvlError(status.reason)
    metrics["SPICE"] = math.nan
    if status.available:
        try:
            from pycocoevalcap.spice.spice import Spice

            score, each = Spice().compute_score(gts, res)
            metrics["SPICE"] = float(score)
            # SPICE returns its per-image scores in sorted id order
            per_image["SPICE"] = {k: float(e["All"]["f"]) for k, e in zip(sorted(ids), each, strict=True)}
        except Exception as exc:  # SPICE 1.0 is known to need Java 8 (lmdbjni); report, don't lose the rest
            status = SpiceStatus(False, f"SPICE failed: {type(exc).__name__}: {exc}")
            if spice is True:
                raise IvlError(status.reason) from None
    return CaptionScores(metrics, per_image, status, len(ids), tokenize, notes)
