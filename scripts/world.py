"""The synthetic world (`harness synth`) as the recipe scripts read it: its captions and
conversations, each picture's scene parsed back from its captions, and the full question
set of a scene (the same templates and answers as `questions` in src/data/synth.rs).
"""
import json, os, re

COLORS = ["red", "green", "blue", "yellow", "purple", "orange"]
KINDS = ["circle", "square", "triangle", "diamond"]
BGS = ["white", "black", "gray"]
POS = ["top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right"]


def load(world, split, instruct):
    """({file: captions in file order}, [(file, [(question, answer, type)])])."""
    ann = json.load(open(os.path.join(world, "annotations", f"captions_{split}2017.json")))
    files = {im["id"]: im["file_name"] for im in ann["images"]}
    caps = {}
    for x in ann["annotations"]:
        caps.setdefault(files[x["image_id"]], []).append(x["caption"].strip())
    convs = []
    for c in json.load(open(os.path.join(world, instruct))):
        t = c["conversations"]
        qa = [(t[i]["value"].replace("<image>", "").strip(), t[i + 1]["value"].strip(), t[i].get("type"))
              for i in range(0, len(t) - 1, 2)]
        convs.append((os.path.basename(c["image"]), qa))
    return caps, convs


def scene(caps):
    """(background, [(colour, kind, size, cell)]) from a picture's captions: the first names
    sizes, the "An image showing" one places every shape."""
    c1 = caps[0]
    c3 = [c for c in caps if c.startswith("An image showing")][0]
    bg = re.search(r"on a (\w+) background", c1).group(1)
    sizes = {(m[1], m[2]): m[0] for m in re.findall(r"(large|small) (\w+) (\w+)", c1)}
    shapes = []
    for m in re.finditer(r"an? (\w+) (\w+) (in the center|at the (\w+)|in the ([\w ]+?) corner)", c3):
        col, kind = m.group(1), m.group(2)
        pos = "center" if m.group(3) == "in the center" else (m.group(4) or m.group(5))
        shapes.append((col, kind, sizes[(col, kind)], POS.index(pos)))
    return bg, shapes


def _a(phrase):
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def all_questions(sc, rng):
    """Every question synth.rs could ask about scene `sc`, shuffled: [(question, answer, type)]."""
    bg, shapes = sc
    out = [(rng.choice(["How many shapes are there in the image?", "How many shapes can you see?",
                        "Count the shapes in the picture."]), str(len(shapes)), "count"),
           (rng.choice(["What color is the background?", "What is the background color of the image?"]),
            bg, "background")]
    k = rng.choice(KINDS)
    out.append((f"How many {k}s are there?", str(sum(s[1] == k for s in shapes)), "count_kind"))
    for col, kind, size, cell in shapes:
        if sum(s[1] == kind for s in shapes) == 1:
            out.append((rng.choice(["What color is the {k}?", "Which color does the {k} have?"])
                        .replace("{k}", kind), col, "color"))
        out.append((rng.choice(["What shape is the {c} object?", "What is the shape of the {c} object?"])
                    .replace("{c}", col), kind, "shape"))
        out.append((rng.choice(["Where is the {s}?", "In which part of the image is the {s}?"])
                    .replace("{s}", f"{col} {kind}"), POS[cell], "position"))
        out.append((f"Is the {col} {kind} large or small?", size, "size"))
    s = rng.choice(shapes)
    out.append((f"Is there {_a(s[0] + ' ' + s[1])} in the image?", "yes", "exists"))
    while True:
        c, k = rng.choice(COLORS), rng.choice(KINDS)
        if not any(s[0] == c and s[1] == k for s in shapes):
            out.append((f"Is there {_a(c + ' ' + k)} in the image?", "no", "exists"))
            break
    rng.shuffle(out)
    return out
