"""Cityscapes label definitions and the label-ID -> train-ID mappings of every supported dataset.

The table is the official one (cityscapesScripts `helpers/labels.py`): id, name, trainId, colour.
GTA5 label PNGs hold Cityscapes label IDs; SYNTHIA-RAND-CITYSCAPES holds its own class IDs, mapped
here by class name onto the same 19 train IDs; BDD100K masks already hold the 19 train IDs; Mapillary
Vistas v1.2 holds 66 classes of its own, mapped by `MAPILLARY_V12_TO_CITYSCAPES`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..errors import DigaError

IGNORE_INDEX = 255


class Label(NamedTuple):
    name: str
    id: int
    train_id: int
    color: tuple[int, int, int]


# (name, id, trainId, colour) exactly as in the official Cityscapes definitions.
LABELS: tuple[Label, ...] = (
    Label("unlabeled", 0, 255, (0, 0, 0)),
    Label("ego vehicle", 1, 255, (0, 0, 0)),
    Label("rectification border", 2, 255, (0, 0, 0)),
    Label("out of roi", 3, 255, (0, 0, 0)),
    Label("static", 4, 255, (0, 0, 0)),
    Label("dynamic", 5, 255, (111, 74, 0)),
    Label("ground", 6, 255, (81, 0, 81)),
    Label("road", 7, 0, (128, 64, 128)),
    Label("sidewalk", 8, 1, (244, 35, 232)),
    Label("parking", 9, 255, (250, 170, 160)),
    Label("rail track", 10, 255, (230, 150, 140)),
    Label("building", 11, 2, (70, 70, 70)),
    Label("wall", 12, 3, (102, 102, 156)),
    Label("fence", 13, 4, (190, 153, 153)),
    Label("guard rail", 14, 255, (180, 165, 180)),
    Label("bridge", 15, 255, (150, 100, 100)),
    Label("tunnel", 16, 255, (150, 120, 90)),
    Label("pole", 17, 5, (153, 153, 153)),
    Label("polegroup", 18, 255, (153, 153, 153)),
    Label("traffic light", 19, 6, (250, 170, 30)),
    Label("traffic sign", 20, 7, (220, 220, 0)),
    Label("vegetation", 21, 8, (107, 142, 35)),
    Label("terrain", 22, 9, (152, 251, 152)),
    Label("sky", 23, 10, (70, 130, 180)),
    Label("person", 24, 11, (220, 20, 60)),
    Label("rider", 25, 12, (255, 0, 0)),
    Label("car", 26, 13, (0, 0, 142)),
    Label("truck", 27, 14, (0, 0, 70)),
    Label("bus", 28, 15, (0, 60, 100)),
    Label("caravan", 29, 255, (0, 0, 90)),
    Label("trailer", 30, 255, (0, 0, 110)),
    Label("train", 31, 16, (0, 80, 100)),
    Label("motorcycle", 32, 17, (0, 0, 230)),
    Label("bicycle", 33, 18, (119, 11, 32)),
    Label("license plate", -1, -1, (0, 0, 142)),
)

NUM_CLASSES = 19
CLASS_NAMES: tuple[str, ...] = tuple(
    lab.name for lab in sorted((x for x in LABELS if 0 <= x.train_id < 255), key=lambda x: x.train_id)
)
PALETTE: np.ndarray = np.array(
    [next(x.color for x in LABELS if x.train_id == t) for t in range(NUM_CLASSES)], dtype=np.uint8
)
NAME_TO_ID: dict[str, int] = {x.name: x.id for x in LABELS if x.id >= 0}

# SYNTHIA-RAND-CITYSCAPES class IDs (its README) -> Cityscapes class names.
SYNTHIA_ID_TO_NAME: dict[int, str] = {
    1: "sky", 2: "building", 3: "road", 4: "sidewalk", 5: "fence", 6: "vegetation", 7: "pole",
    8: "car", 9: "traffic sign", 10: "person", 11: "bicycle", 12: "motorcycle", 15: "traffic light",
    16: "terrain", 17: "rider", 18: "truck", 19: "bus", 20: "train", 21: "wall",
}

# Mapillary Vistas v1.2 (its `config.json`, in label-ID order 0..65) -> the Cityscapes class it counts as
# (None: ignored, 255). The table the DiGA authors evaluate with: only classes that ARE a Cityscapes class
# are kept, so crosswalks, bike/service lanes, parking, bridges, street lights and the like are ignored
# rather than guessed. The one table every Mapillary label passes through.
MAPILLARY_V12_TO_CITYSCAPES: tuple[tuple[str, str | None], ...] = (
    ("animal--bird", None),                          # 0
    ("animal--ground-animal", None),                 # 1
    ("construction--barrier--curb", "sidewalk"),     # 2  the kerb is annotated as sidewalk in Cityscapes
    ("construction--barrier--fence", "fence"),       # 3
    ("construction--barrier--guard-rail", None),     # 4  Cityscapes: guard rail (void)
    ("construction--barrier--other-barrier", None),  # 5
    ("construction--barrier--wall", "wall"),         # 6
    ("construction--flat--bike-lane", None),         # 7
    ("construction--flat--crosswalk-plain", None),   # 8
    ("construction--flat--curb-cut", None),          # 9
    ("construction--flat--parking", None),           # 10 Cityscapes: parking (void)
    ("construction--flat--pedestrian-area", None),   # 11
    ("construction--flat--rail-track", None),        # 12 Cityscapes: rail track (void)
    ("construction--flat--road", "road"),            # 13
    ("construction--flat--service-lane", None),      # 14
    ("construction--flat--sidewalk", "sidewalk"),    # 15
    ("construction--structure--bridge", None),       # 16 Cityscapes: bridge (void)
    ("construction--structure--building", "building"),  # 17
    ("construction--structure--tunnel", None),       # 18 Cityscapes: tunnel (void)
    ("human--person", "person"),                     # 19
    ("human--rider--bicyclist", "rider"),            # 20
    ("human--rider--motorcyclist", "rider"),         # 21
    ("human--rider--other-rider", "rider"),          # 22
    ("marking--crosswalk-zebra", None),              # 23
    ("marking--general", "road"),                    # 24 lane markings lie on the road
    ("nature--mountain", None),                      # 25
    ("nature--sand", None),                          # 26
    ("nature--sky", "sky"),                          # 27
    ("nature--snow", None),                          # 28
    ("nature--terrain", "terrain"),                  # 29
    ("nature--vegetation", "vegetation"),            # 30
    ("nature--water", None),                         # 31
    ("object--banner", None),                        # 32
    ("object--bench", None),                         # 33
    ("object--bike-rack", None),                     # 34
    ("object--billboard", None),                     # 35
    ("object--catch-basin", None),                   # 36
    ("object--cctv-camera", None),                   # 37
    ("object--fire-hydrant", None),                  # 38
    ("object--junction-box", None),                  # 39
    ("object--mailbox", None),                       # 40
    ("object--manhole", "road"),                     # 41 a manhole cover is part of the road surface
    ("object--phone-booth", None),                   # 42
    ("object--pothole", None),                       # 43
    ("object--street-light", None),                  # 44
    ("object--support--pole", "pole"),               # 45
    ("object--support--traffic-sign-frame", None),   # 46
    ("object--support--utility-pole", "pole"),       # 47
    ("object--traffic-light", "traffic light"),      # 48
    ("object--traffic-sign--back", None),            # 49 Cityscapes labels only the front of a sign
    ("object--traffic-sign--front", "traffic sign"),  # 50
    ("object--trash-can", None),                     # 51
    ("object--vehicle--bicycle", "bicycle"),         # 52
    ("object--vehicle--boat", None),                 # 53
    ("object--vehicle--bus", "bus"),                 # 54
    ("object--vehicle--car", "car"),                 # 55
    ("object--vehicle--caravan", None),              # 56 Cityscapes: caravan (void)
    ("object--vehicle--motorcycle", "motorcycle"),   # 57
    ("object--vehicle--on-rails", "train"),          # 58 trams and trains: Cityscapes "train"
    ("object--vehicle--other-vehicle", None),        # 59
    ("object--vehicle--trailer", None),              # 60 Cityscapes: trailer (void)
    ("object--vehicle--truck", "truck"),             # 61
    ("object--vehicle--wheeled-slow", None),         # 62
    ("void--car-mount", None),                       # 63
    ("void--ego-vehicle", None),                     # 64
    ("void--unlabeled", None),                       # 65
)

# Evaluation subsets (train IDs): SYNTHIA's 16 classes drop terrain, truck, train; 13 also wall, fence, pole.
SUBSETS: dict[int, tuple[int, ...]] = {
    19: tuple(range(19)),
    16: tuple(t for t in range(19) if t not in (9, 14, 16)),
    13: tuple(t for t in range(19) if t not in (3, 4, 5, 9, 14, 16)),
}


def _lut(pairs: dict[int, int], size: int) -> np.ndarray:
    lut = np.full(size, IGNORE_INDEX, dtype=np.uint8)
    for src, dst in pairs.items():
        lut[src] = dst
    return lut


_CITYSCAPES_LUT = _lut({x.id: x.train_id for x in LABELS if x.id >= 0 and x.train_id >= 0}, 256)
_NAME_TO_TRAIN = {x.name: x.train_id for x in LABELS if x.id >= 0}
_SYNTHIA_LUT = _lut({sid: _NAME_TO_TRAIN[name] for sid, name in SYNTHIA_ID_TO_NAME.items()}, 65536)
_MAPILLARY_LUT = _lut({vid: _NAME_TO_TRAIN[name] for vid, (_, name) in enumerate(MAPILLARY_V12_TO_CITYSCAPES)
                       if name is not None}, 256)
_TRAIN_ID_LUT = _lut({t: t for t in range(NUM_CLASSES)}, 256)  # labels that already hold train IDs
_LUTS = {"cityscapes": _CITYSCAPES_LUT, "gta5": _CITYSCAPES_LUT, "synthetic": _CITYSCAPES_LUT,
         "synthia": _SYNTHIA_LUT, "mapillary": _MAPILLARY_LUT, "bdd100k": _TRAIN_ID_LUT}


def to_train_ids(label_ids: np.ndarray, dataset: str) -> np.ndarray:
    """Map a label-ID array of `dataset` ('cityscapes', 'gta5', 'synthia', 'synthetic', 'mapillary',
    'bdd100k') to uint8 train IDs (0..18, 255 = ignore), by one table look-up."""
    try:
        lut = _LUTS[dataset]
    except KeyError:
        raise DigaError(f"unknown dataset {dataset!r} for label mapping; use one of {sorted(_LUTS)}") from None
    arr = np.asarray(label_ids)
    if not np.issubdtype(arr.dtype, np.integer):
        raise DigaError(f"label IDs must be integers, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= lut.size):
        raise DigaError(f"label IDs out of range for {dataset}: [{arr.min()}, {arr.max()}]")
    return lut[arr]

