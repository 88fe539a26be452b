#!/usr/bin/env python3
"""Reference caption scores from pycocoevalcap for the Rust parity test.

Writes tests/fixtures/eval/caption_cases.json: cases of pre-tokenized predictions and
references (what pycocoevalcap's PTBTokenizer would output) with the scores of
pycocoevalcap's Bleu(4), Rouge() and Cider() scorers. The scorers are called directly on
tokenized text, so no Java is needed (PTBTokenizer, METEOR and SPICE need it).

    pip install pycocoevalcap
    python scripts/ref_captions.py          # from the repository root

tests/it/eval_captions.rs checks the Rust metrics against these numbers (<= 1e-6).
"""
import json
import random
from pathlib import Path

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

OUT = Path("tests/fixtures/eval/caption_cases.json")


def hand_cases():
    basic = {
        "preds": {
            "1": "a man riding a wave on top of a surfboard",
            "2": "a cat sitting on a couch",
            "3": "two dogs play in the grass",
            "4": "a plate of food with broccoli",
        },
        "refs": {
            "1": ["a man riding a wave on a surfboard", "a surfer rides a big wave",
                  "a man on a surfboard riding a wave in the ocean",
                  "surfer riding a wave on top of a surfboard", "a person surfing"],
            "2": ["a cat laying on a couch", "a grey cat sitting on a sofa"],
            "3": ["two dogs are playing in the grass", "dogs running on a lawn",
                  "a pair of dogs playing outside"],
            "4": ["a plate with broccoli and meat"],
        },
    }
    edge = {
        # empty prediction, one-word caption, repeated words, different reference counts,
        # a prediction longer than every reference, 's tokens from PTB.
        "preds": {
            "10": "",
            "11": "dog",
            "12": "a a a a a a red red square",
            "13": "the man 's hat is n't red and the woman 's hat is blue and green and yellow",
            "14": "a red circle above a blue square",
        },
        "refs": {
            "10": ["a red triangle", "a triangle that is red"],
            "11": ["a dog", "a small brown dog on the floor", "dog", "the dog sleeps"],
            "12": ["a red square", "a red square and a red circle", "red square"],
            "13": ["a man in a red hat"],
            "14": ["a red circle above a blue square", "a blue square below a red circle",
                   "red circle blue square", "two shapes", "a circle and a square",
                   "a red circle is above a blue square"],
        },
    }
    one_image = {
        "preds": {"5": "a red circle"},
        "refs": {"5": ["a red circle", "a big red circle"]},
    }
    all_empty = {
        "preds": {"1": "", "2": ""},
        "refs": {"1": ["a red circle"], "2": ["a blue square", "blue square"]},
    }
    return {"basic": basic, "edge": edge, "one_image": one_image, "all_empty": all_empty}


def random_case(seed, images):
    """Captions over a small vocabulary, so n-grams repeat across images (real dfs)."""
    rng = random.Random(seed)
    vocab = ("a the red blue green square circle triangle big small on above below "
             "next to left right of two three and is with").split()

    def sentence(lo, hi):
        return " ".join(rng.choice(vocab) for _ in range(rng.randint(lo, hi)))

    preds, refs = {}, {}
    for i in range(images):
        key = str(1000 + i)
        refs[key] = [sentence(2, 12) for _ in range(rng.randint(1, 6))]
        # Half the predictions copy pieces of a reference, so higher n-grams match.
        if rng.random() < 0.5:
            r = rng.choice(refs[key]).split()
            cut = rng.randint(0, len(r))
            preds[key] = " ".join(r[:cut] + sentence(0, 4).split())
        else:
            preds[key] = sentence(0, 10)
    return {"preds": preds, "refs": refs}


def scores(case):
    gts = {k: v for k, v in case["refs"].items()}
    res = {k: [v] for k, v in case["preds"].items()}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    out = {f"Bleu_{i + 1}": float(b) for i, b in enumerate(bleu)}
    out["ROUGE_L"] = float(rouge)
    out["CIDEr"] = float(cider)
    return out


def main():
    cases = hand_cases()
    cases["random_40"] = random_case(7, 40)
    cases["random_200"] = random_case(11, 200)
    out = []
    for name, case in cases.items():
        out.append({"name": name, **case, "scores": scores(case)})
        print(name, out[-1]["scores"])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
