"""Procedural street-scene geometry: a pinhole camera over a flat street, pixel-exact labels.

Everything is placed in metres (lateral offset X, depth Z, height) and projected with one focal
length, so object sizes, the road's perspective and occlusion order follow from the camera alone.
The output is a Cityscapes label-ID map, an instance map and a part map (windows, wheels, ...);
`synthetic_render` turns these into a source-style or a target-style image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .labels import NAME_TO_ID

ID = NAME_TO_ID  # short alias: ID["car"] == 26

# Part codes: appearance varies inside one label (a window is still 'car').
PART_BODY, PART_WINDOW, PART_WHEEL, PART_LAMP, PART_MARKING = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class SceneStyle:
    """Geometry distribution of one domain (camera and street layout, class frequencies)."""

    horizon: tuple[float, float]  # horizon row as a fraction of H
    cam_height: tuple[float, float]  # metres
    focal: tuple[float, float]  # focal length as a fraction of W
    road_half: tuple[float, float]  # half road width, metres
    sidewalk: tuple[float, float]  # sidewalk width, metres
    p_terrain: float  # chance a side has a grass strip
    p_park: float  # chance a side has no buildings (trees and terrain instead)
    building_height: tuple[float, float]
    cars: float  # mean count (Poisson)
    big_vehicles: float
    persons: float
    cyclists: float
    poles: float
    trees: float
    p_wall: float
    p_fence: float
    ego_hood: bool  # bottom rows show the ego vehicle (label 'ego vehicle', ignored)


SOURCE_SCENE = SceneStyle(
    horizon=(0.36, 0.46), cam_height=(1.9, 2.6), focal=(0.85, 1.0), road_half=(4.0, 7.0),
    sidewalk=(1.5, 3.0), p_terrain=0.25, p_park=0.1, building_height=(8.0, 30.0), cars=6.0,
    big_vehicles=1.0, persons=3.0, cyclists=0.6, poles=4.0, trees=3.0, p_wall=0.35, p_fence=0.35,
    ego_hood=False,
)

TARGET_SCENE = SceneStyle(
    horizon=(0.42, 0.52), cam_height=(1.3, 1.7), focal=(1.0, 1.2), road_half=(3.0, 5.5),
    sidewalk=(2.0, 4.0), p_terrain=0.45, p_park=0.2, building_height=(10.0, 22.0), cars=4.0,
    big_vehicles=0.5, persons=5.0, cyclists=1.2, poles=6.0, trees=6.0, p_wall=0.25, p_fence=0.45,
    ego_hood=True,
)


@dataclass
class Scene:
    label: np.ndarray  # (H,W) uint8 Cityscapes label IDs
    instance: np.ndarray  # (H,W) int32, 0 = stuff without instance
    part: np.ndarray  # (H,W) uint8 part code
    horizon: float  # row of the horizon


class _Canvas:
    """Painter's-algorithm canvas: later paints occlude earlier ones."""

    def __init__(self, h: int, w: int) -> None:
        self.h, self.w = h, w
        self.label = np.full((h, w), ID["sky"], dtype=np.uint8)
        self.instance = np.zeros((h, w), dtype=np.int32)
        self.part = np.zeros((h, w), dtype=np.uint8)
        self.ys = np.arange(h, dtype=np.float32)[:, None]
        self.xs = np.arange(w, dtype=np.float32)[None, :]
        self._next = 1

    def new_instance(self) -> int:
        self._next += 1
        return self._next - 1

    def box(self, x0: float, y0: float, x1: float, y1: float) -> tuple[slice, slice] | None:
        """Integer slices of a box clipped to the canvas, or None if empty."""
        a, b = max(int(np.floor(y0)), 0), min(int(np.ceil(y1)), self.h)
        c, d = max(int(np.floor(x0)), 0), min(int(np.ceil(x1)), self.w)
        if a >= b or c >= d:
            return None
        return slice(a, b), slice(c, d)

    def paint(self, sl: tuple[slice, slice], mask: np.ndarray | None, cls: int, inst: int, part: int) -> None:
        ys, xs = sl
        if mask is None:
            self.label[ys, xs] = cls
            self.instance[ys, xs] = inst
            self.part[ys, xs] = part
            return
        self.label[ys, xs][mask] = cls
        self.instance[ys, xs][mask] = inst
        self.part[ys, xs][mask] = part

    def rect(self, x0: float, y0: float, x1: float, y1: float, cls: int, inst: int, part: int = 0) -> None:
        sl = self.box(x0, y0, x1, y1)
        if sl is not None:
            self.paint(sl, None, cls, inst, part)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, cls: int, inst: int, part: int = 0,
                ring: float = 0.0) -> None:
        sl = self.box(cx - rx, cy - ry, cx + rx + 1, cy + ry + 1)
        if sl is None or rx < 0.5 or ry < 0.5:
            return
        d = ((self.xs[:, sl[1]] - cx) / rx) ** 2 + ((self.ys[sl[0]] - cy) / ry) ** 2
        mask = d <= 1.0
        if ring > 0:
            mask &= d >= (1.0 - ring) ** 2
        self.paint(sl, mask, cls, inst, part)


def _u(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(rng.uniform(*lo_hi))


def make_scene(h: int, w: int, style: SceneStyle, rng: np.random.Generator) -> Scene:
    """Sample one street scene of size (h, w) from `style`."""
    cv = _Canvas(h, w)
    yh = _u(rng, style.horizon) * h
    cam = _u(rng, style.cam_height)
    f = _u(rng, style.focal) * w
    xv = w * (0.5 + rng.uniform(-0.06, 0.06))
    road_l, road_r = -_u(rng, style.road_half), _u(rng, style.road_half)
    sides = []
    for sign, road_edge in ((-1, road_l), (1, road_r)):
        walk = _u(rng, style.sidewalk)
        terrain = rng.uniform(1.0, 4.0) if rng.random() < style.p_terrain else 0.0
        park = rng.random() < style.p_park
        sides.append(dict(sign=sign, road=road_edge, walk=road_edge + sign * walk,
                          facade=road_edge + sign * (walk + terrain), park=park, terrain=terrain))

    ys, xs = cv.ys, cv.xs
    below = ys > yh + 0.5
    ppm_rows = np.clip((ys - yh) / cam, 1e-3, None)  # pixels per metre at each ground row
    lateral = (xs - xv) / ppm_rows  # lateral metres of each ground pixel (valid below the horizon)

    # Ground: road, sidewalks, terrain, and beyond the facade line a building base (filled later).
    ground = np.where(lateral < sides[0]["walk"], ID["terrain"], ID["sidewalk"]).astype(np.uint8)
    ground = np.where(lateral > sides[1]["walk"], ID["terrain"], ground)
    ground = np.where((lateral >= road_l) & (lateral <= road_r), ID["road"], ground)
    cv.label[:] = np.where(below, ground, ID["sky"])
    # Lane markings: dashes on the centre line (still 'road'), drawn as a part.
    depth = f * cam / np.clip(ys - yh, 1e-3, None)
    centre = (np.abs(lateral - (road_l + road_r) / 2) < 0.08) & below & (np.floor(depth / 3.0) % 2 == 0)
    cv.part[centre & (cv.label == ID["road"])] = PART_MARKING

    # Facades: per side, a run of buildings along depth; each column's base/top lines follow.
    z_far = 160.0
    for side in sides:
        xf = side["facade"]
        z = 2.0
        while z < z_far:
            length = rng.uniform(8.0, 30.0)
            z0, z1 = z, min(z + length, z_far)
            z = z1 + (rng.uniform(0.0, 6.0) if rng.random() < 0.3 else 0.0)
            if side["park"]:
                continue
            height = _u(rng, style.building_height)
            xa, xb = sorted((xv + f * xf / z0, xv + f * xf / z1))
            sl = cv.box(xa, 0, xb + 1, h)
            if sl is None:
                continue
            col = xs[:, sl[1]]
            scale = np.abs(col - xv) / abs(xf)  # = f / Z for this column
            top, base = yh - (height - cam) * scale, yh + cam * scale
            mask = (ys[sl[0]] >= top) & (ys[sl[0]] < base)
            inst = cv.new_instance()
            cv.paint(sl, mask, ID["building"], inst, PART_BODY)
            # Windows: a grid of parts on the facade (every ~3 m high, ~2.5 m along the street).
            zcol = f * abs(xf) / np.clip(np.abs(col - xv), 1e-3, None)
            rel_h = (yh - ys[sl[0]]) / scale + cam  # height above ground in metres
            win = mask & ((rel_h % 3.2) > 1.2) & ((rel_h % 3.2) < 2.6) & ((zcol % 2.6) < 1.3) & (rel_h > 2.5)
            cv.part[sl][win] = PART_WINDOW

    # Things, sorted far to near so nearer ones occlude.
    things: list[tuple[float, str, float]] = []  # (depth, kind, lateral)
    def place(kind: str, count: float, lat_fn) -> None:
        for _ in range(rng.poisson(count)):
            things.append((float(rng.uniform(4.0, 70.0) ** 1.0), kind, lat_fn()))

    def on_walk(side_i: int | None = None) -> float:
        s = sides[rng.integers(2) if side_i is None else side_i]
        return float(rng.uniform(min(s["road"], s["walk"]), max(s["road"], s["walk"])))

    def on_road() -> float:
        return float(rng.uniform(road_l + 1.0, road_r - 1.0))

    place("car", style.cars, on_road)
    place("big", style.big_vehicles, on_road)
    place("person", style.persons, on_walk)
    place("cyclist", style.cyclists, lambda: float(rng.choice([road_l + 0.6, road_r - 0.6])))
    place("pole", style.poles, lambda: (sides[0]["walk"] + 0.4) if rng.random() < 0.5 else (sides[1]["walk"] - 0.4))
    place("tree", style.trees, lambda: (sides[0]["facade"] + 1.0) if rng.random() < 0.5 else (sides[1]["facade"] - 1.0))
    for side in sides:
        for kind, p in (("wall", style.p_wall), ("fence", style.p_fence)):
            if rng.random() < p:
                things.append((float(rng.uniform(5.0, 40.0)), kind, side["facade"] - side["sign"] * 0.2))
    things.sort(key=lambda t: -t[0])

    for z, kind, x in things:
        s = f / z  # pixels per metre at this depth
        yb = yh + cam * s
        xc = xv + x * s
        if yb - yh < 2:
            continue
        inst = cv.new_instance()
        if kind == "car":
            wm, hm = rng.uniform(1.7, 2.0), rng.uniform(1.4, 1.7)
            x0, x1 = xc - wm * s / 2, xc + wm * s / 2
            cv.rect(x0, yb - 0.55 * hm * s, x1, yb - 0.15 * hm * s, ID["car"], inst)
            cv.rect(x0 + 0.15 * wm * s, yb - hm * s, x1 - 0.15 * wm * s, yb - 0.5 * hm * s, ID["car"], inst)
            cv.rect(x0 + 0.22 * wm * s, yb - 0.92 * hm * s, x1 - 0.22 * wm * s, yb - 0.58 * hm * s,
                    ID["car"], inst, PART_WINDOW)
            for wx in (x0 + 0.2 * wm * s, x1 - 0.2 * wm * s):
                cv.ellipse(wx, yb - 0.17 * hm * s, 0.17 * hm * s, 0.17 * hm * s, ID["car"], inst, PART_WHEEL)
            cv.rect(x0 + 0.05 * wm * s, yb - 0.48 * hm * s, x0 + 0.2 * wm * s, yb - 0.4 * hm * s, ID["car"], inst, PART_LAMP)
            cv.rect(x1 - 0.2 * wm * s, yb - 0.48 * hm * s, x1 - 0.05 * wm * s, yb - 0.4 * hm * s, ID["car"], inst, PART_LAMP)
        elif kind == "big":
            cls = ID["bus"] if rng.random() < 0.45 else ID["truck"]
            wm, hm = rng.uniform(2.4, 2.6), rng.uniform(3.0, 3.6)
            x0, x1 = xc - wm * s / 2, xc + wm * s / 2
            cv.rect(x0, yb - hm * s, x1, yb - 0.15 * hm * s, cls, inst)
            if cls == ID["bus"]:
                cv.rect(x0 + 0.05 * wm * s, yb - 0.85 * hm * s, x1 - 0.05 * wm * s, yb - 0.55 * hm * s, cls, inst, PART_WINDOW)
            else:
                cv.rect(x0 + 0.1 * wm * s, yb - 0.95 * hm * s, x1 - 0.1 * wm * s, yb - 0.8 * hm * s, cls, inst, PART_WINDOW)
            for wx in (x0 + 0.15 * wm * s, x1 - 0.15 * wm * s):
                cv.ellipse(wx, yb - 0.1 * hm * s, 0.1 * hm * s, 0.1 * hm * s, cls, inst, PART_WHEEL)
        elif kind == "person":
            hm = rng.uniform(1.55, 1.9)
            wm = 0.6
            cv.rect(xc - wm * s * 0.35, yb - 0.5 * hm * s, xc + wm * s * 0.35, yb, ID["person"], inst, PART_WINDOW)
            cv.ellipse(xc, yb - 0.65 * hm * s, wm * s / 2, 0.2 * hm * s, ID["person"], inst)
            cv.ellipse(xc, yb - 0.92 * hm * s, 0.11 * s, 0.12 * s, ID["person"], inst, PART_LAMP)
        elif kind == "cyclist":
            r = 0.33 * s
            bike = inst
            for wx in (xc - 0.55 * s, xc + 0.55 * s):
                cv.ellipse(wx, yb - r, r, r, ID["bicycle"], bike, PART_WHEEL, ring=0.45)
            cv.rect(xc - 0.55 * s, yb - 1.1 * r, xc + 0.55 * s, yb - 0.9 * r, ID["bicycle"], bike)
            rider = cv.new_instance()
            cv.ellipse(xc, yb - 2.2 * r, 0.22 * s, 0.45 * s, ID["rider"], rider)
            cv.ellipse(xc, yb - 3.5 * r, 0.11 * s, 0.12 * s, ID["rider"], rider, PART_LAMP)
        elif kind == "pole":
            hm = rng.uniform(3.5, 7.0)
            pw = max(0.25 * s, 1.5)
            cv.rect(xc - pw / 2, yb - hm * s, xc + pw / 2, yb, ID["pole"], inst)
            top = yb - hm * s
            r = rng.random()
            if r < 0.45:
                cls_i = cv.new_instance()
                if rng.random() < 0.5:
                    cv.ellipse(xc, top + 0.45 * s, 0.45 * s, 0.45 * s, ID["traffic sign"], cls_i)
                else:
                    cv.rect(xc - 0.45 * s, top, xc + 0.45 * s, top + 0.8 * s, ID["traffic sign"], cls_i)
            elif r < 0.8:
                li = cv.new_instance()
                cv.rect(xc - 0.25 * s, top, xc + 0.25 * s, top + 1.1 * s, ID["traffic light"], li)
                lamp = int(rng.integers(3))
                cv.ellipse(xc, top + (0.15 + 0.3 * lamp) * s, 0.1 * s, 0.1 * s, ID["traffic light"], li, PART_LAMP)
        elif kind == "tree":
            trunk_h = rng.uniform(1.8, 3.0)
            cw, ch = rng.uniform(2.5, 5.0), rng.uniform(2.5, 4.5)
            cv.rect(xc - 0.15 * s, yb - trunk_h * s, xc + 0.15 * s, yb, ID["vegetation"], inst, PART_WINDOW)
            cv.ellipse(xc, yb - (trunk_h + ch / 2) * s, cw * s / 2, ch * s / 2, ID["vegetation"], inst)
        elif kind in ("wall", "fence"):
            length = rng.uniform(6.0, 25.0)
            hm = rng.uniform(1.0, 2.2)
            z0, z1 = z, z + length
            xa, xb = sorted((xv + f * x / z0, xv + f * x / z1))
            sl = cv.box(xa, 0, xb + 1, h)
            if sl is None:
                continue
            scale = np.abs(xs[:, sl[1]] - xv) / max(abs(x), 1e-3)
            mask = (ys[sl[0]] >= yh + (cam - hm) * scale) & (ys[sl[0]] < yh + cam * scale)
            cls = ID[kind]
            cv.paint(sl, mask, cls, inst, PART_BODY)
            if kind == "fence":  # see-through lattice: holes show what was behind? keep simple bars as parts
                zc = f * abs(x) / np.clip(np.abs(xs[:, sl[1]] - xv), 1e-3, None)
                cv.part[sl][mask & ((zc % 1.0) < 0.5)] = PART_WINDOW

    if style.ego_hood:
        hood = (ys > h * 0.92 - 0.06 * h * (1 - ((xs - w / 2) / (w / 2)) ** 2))
        cv.label[hood] = ID["ego vehicle"]
        cv.instance[hood] = 0
        cv.part[hood] = PART_BODY

    return Scene(label=cv.label, instance=cv.instance, part=cv.part, horizon=yh)
