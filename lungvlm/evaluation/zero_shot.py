"""Zero-shot attribute classification against the supervised concept head.

Each attribute is a yes/no question about a nodule with a reference answer from the phantom's
nodule labels, a prompt pair in the report language the decoder was trained on
(``lungvlm/text/vocabulary.py``; positive first), and the concept-head output that answers the
same question, with its direction (the LIDC scales run both ways: calcification 6 = absent,
margin 5 = sharp). Zero-shot probability: softmax over the two prompts of the scaled cosine
similarity between the contrastive visual and text embeddings
(:func:`lungvlm.models.contrastive.zero_shot_scores`), first column. The section compares the
two AUROCs on the same test nodules. Zero-shot results depend on the prompt wording (RenalCLIP
reports the same sensitivity); the prompts are fixed here so runs are comparable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lungvlm.evaluation.subgroups import DEFAULT_BOOTSTRAP, bootstrap_ci


@dataclass(frozen=True)
class Attribute:
    """One audited attribute (module docstring)."""

    name: str
    prompts: tuple[str, str]
    label_field: str
    positive_values: tuple[str, ...]
    concept: str
    concept_sign: int  # +1: a high concept value means "yes"; -1: a low one does


ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute("spiculated", ("A spiculated nodule.", "A smooth nodule."), "margin",
              ("spiculated",), "spiculation", 1),
    Attribute("lobulated", ("A lobulated nodule.", "A smooth nodule."), "margin",
              ("lobulated",), "lobulation", 1),
    Attribute("ill_defined", ("An ill-defined nodule.", "A well-circumscribed nodule."),
              "margin", ("ill_defined",), "margin", -1),
    Attribute("calcified", ("A calcified nodule.", "A noncalcified nodule."), "calcification",
              ("central", "diffuse", "popcorn", "laminated"), "calcification", -1),
    Attribute("solid", ("A solid nodule.", "A ground-glass nodule."), "attenuation",
              ("solid",), "texture", 1),
    Attribute("round", ("A round nodule.", "An irregular nodule."), "shape", ("round",),
              "sphericity", 1),
)  # fmt: skip


def attribute_label(attribute: Attribute, nodule: Mapping | None) -> int | None:
    """1/0 reference answer from a phantom nodule label dict; None without the field."""
    if not nodule or nodule.get(attribute.label_field) is None:
        return None
    return int(str(nodule[attribute.label_field]) in attribute.positive_values)


def zero_shot_section(test: Sequence[Mapping], n_boot: int = DEFAULT_BOOTSTRAP) -> dict:
    """Per attribute: zero-shot and concept-head AUROC (bootstrap CIs) on the same nodules.

    Records need ``nodule`` (labels), ``zero_shot`` ({attribute: probability}) and
    ``concept_probabilities`` ({concept: value}); others are skipped.
    """
    from lungvlm.evaluation.audit import auroc

    out: dict = {}
    for attribute in ATTRIBUTES:
        rows = []
        for r in test:
            label = attribute_label(attribute, r.get("nodule"))
            shot = (r.get("zero_shot") or {}).get(attribute.name)
            concept = (r.get("concept_probabilities") or {}).get(attribute.concept)
            if label is not None and shot is not None and concept is not None:
                rows.append((float(shot), attribute.concept_sign * float(concept), label))

        def metric(index: int):
            return lambda sample: auroc([s[index] for s in sample], [s[2] for s in sample])

        out[attribute.name] = {
            "n": len(rows),
            "positives": sum(s[2] for s in rows),
            "prompts": list(attribute.prompts),
            "concept": attribute.concept,
            "zero_shot_auroc": {"value": metric(0)(rows), "ci": list(bootstrap_ci(rows, metric(0), n_boot))},
            "concept_head_auroc": {"value": metric(1)(rows), "ci": list(bootstrap_ci(rows, metric(1), n_boot))},
        }  # fmt: skip
    return out
