"""CPU rendering of ``.glb`` scenes with trimesh + pyrender on OSMesa (no GPU, no display).

Needs Debian ``libosmesa6`` and PyOpenGL >= 3.1.7 (pyrender pins 3.1.0, whose OSMesa bindings lack
``OSMesaCreateContextAttribs``). The instance map comes from a flat-colour pass where each instance's nodes are
drawn in a colour that encodes its id; instance ids and categories come from node names ``obj<id>_<category>_p<k>``
(what :mod:`habitat_sim_bridge.scenegen` writes) or, for other scenes, one id per mesh node.
"""

from __future__ import annotations

import ctypes.util
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from habitat_sim_bridge.errors import BridgeError
from habitat_sim_bridge.geometry import camera_pose
from habitat_sim_bridge.navgrid import NavGrid
from habitat_sim_bridge.sources.base import CameraIntrinsics, Frame, FrameSource, ObjectInfo

# PyOpenGL picks its platform at first import: this must run before anything imports OpenGL (pyrender does)
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

_NODE_RE = re.compile(r"^obj(\d+)_([a-z_]+?)_p\d+")
# z-up assets (e.g. habitat's simple_room.glb) are turned so +z becomes +y, Habitat's up
_Z_UP_TO_Y_UP = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]], dtype=float)


def osmesa_available() -> str | None:
    """None when OSMesa rendering can work here, else the reason it cannot."""
    if ctypes.util.find_library("OSMesa") is None:
        return "libOSMesa not found (install the Debian package libosmesa6)"
    try:
        import pyrender  # noqa: F401
        import trimesh  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed (pip install -r requirements/habitat.txt)"
    import OpenGL

    version = tuple(int(v) for v in OpenGL.__version__.split(".")[:3] if v.isdigit())
    if version < (3, 1, 7):
        return f"PyOpenGL {OpenGL.__version__} lacks OSMesa context attributes; need >= 3.1.7"
    return None


def _detect_up(path: Path, meta: dict | None) -> str:
    """Up axis from our sidecar, a habitat ``.stage_config.json`` beside the asset, else glTF's y-up."""
    if meta and meta.get("up") in ("y", "z"):
        return meta["up"]
    stage = path.with_name(path.name.split(".")[0] + ".stage_config.json")
    if stage.is_file():
        up = json.loads(stage.read_text()).get("up")
        if up == [0, 0, 1]:
            return "z"
    return "y"


class MeshSource(FrameSource):
    """Render a mesh scene at agent poses: RGB, depth (metres), instance ids."""

    def __init__(
        self,
        scene_path: str | Path,
        width: int = 320,
        height: int = 240,
        hfov: float = 90.0,
        sensor_height: float = 1.25,
        up: str = "auto",
        headlight: bool = True,
    ):
        if not Path(scene_path).is_file():
            raise BridgeError(f"{scene_path}: scene file not found")
        reason = osmesa_available()
        if reason:
            raise BridgeError(f"MeshSource cannot render here: {reason}")
        import pyrender
        import trimesh

        self.path = Path(scene_path)
        meta_path = self.path.with_name(self.path.stem + ".scene.json")
        self.meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
        self.up = _detect_up(self.path, self.meta) if up == "auto" else up
        self.intrinsics = CameraIntrinsics.from_hfov(width, height, hfov)
        self.sensor_height = sensor_height
        self.navgrid = self._load_navgrid()
        self._pyrender = pyrender

        tm_scene = trimesh.load(str(self.path), force="scene")
        root = _Z_UP_TO_Y_UP if self.up == "z" else np.eye(4)
        self.scene = pyrender.Scene(ambient_light=[0.38, 0.38, 0.38], bg_color=[0, 0, 0, 0])
        self.objects: dict[int, ObjectInfo] = {}
        by_meta = {o["instance_id"]: o for o in (self.meta or {}).get("objects", [])}
        self._seg_map = {}
        next_id = 1
        # a fixed draw order: coplanar faces (decals, skirting) resolve the same way every run
        for node_name in sorted(tm_scene.graph.nodes_geometry):
            transform, geom_name = tm_scene.graph[node_name]
            geom = tm_scene.geometry[geom_name]
            if not hasattr(geom, "faces"):
                continue
            match = _NODE_RE.match(node_name)
            if match:
                iid, category = int(match.group(1)), match.group(2)
            else:
                iid, category = next_id, re.sub(r"[\d_.\-]+$", "", node_name).lower() or "object"
            next_id = max(next_id, iid) + 1
            mesh = pyrender.Mesh.from_trimesh(geom, smooth=False)
            node = self.scene.add(mesh, pose=root @ transform)
            self._seg_map[node] = ((iid >> 16) & 255, (iid >> 8) & 255, iid & 255)
            if iid not in self.objects:
                info = by_meta.get(iid, {})
                self.objects[iid] = ObjectInfo(iid, category, info.get("color", ""), info.get("position", []))
        self._camera = pyrender.IntrinsicsCamera(
            self.intrinsics.fx, self.intrinsics.fy, self.intrinsics.cx, self.intrinsics.cy, znear=0.05, zfar=50.0
        )
        self._cam_node = self.scene.add(self._camera)
        # soft key light from above-front plus a dim headlight so walls facing away from the key are not black
        key = pyrender.DirectionalLight(color=[1.0, 0.98, 0.94], intensity=2.2)
        self.scene.add(key, pose=_look_down(np.radians(55), np.radians(30)))
        fill = pyrender.DirectionalLight(color=[0.9, 0.95, 1.0], intensity=1.0)
        self.scene.add(fill, pose=_look_down(np.radians(35), np.radians(210)))
        # a directional "headlight" along the view: unlike a point light it cannot blow out a wall right in front
        self._headlight = self.scene.add(pyrender.DirectionalLight(intensity=1.2)) if headlight else None
        self._renderer = pyrender.OffscreenRenderer(width, height)

    def _load_navgrid(self) -> NavGrid | None:
        if not self.meta or "navgrid" not in self.meta:
            return None
        g = self.meta["navgrid"]
        free = np.load(self.path.with_name(g["file"]), allow_pickle=False)
        return NavGrid(free=free, origin=tuple(g["origin"]), cell=g["cell"], floor_y=g.get("floor_y", 0.0))

    def is_navigable(self, position: Sequence[float]) -> bool:
        return True if self.navgrid is None else self.navgrid.is_free(position)

    def render(self, position: Sequence[float], rotation: Sequence[float]) -> Frame:
        pose = camera_pose(position, rotation, self.sensor_height)
        self.scene.set_pose(self._cam_node, pose)
        if self._headlight is not None:
            self.scene.set_pose(self._headlight, pose)
        rgb, depth = self._renderer.render(self.scene)
        seg, _ = self._renderer.render(self.scene, flags=self._pyrender.RenderFlags.SEG, seg_node_map=self._seg_map)
        seg = seg.astype(np.int32)
        ids = (seg[:, :, 0] << 16) | (seg[:, :, 1] << 8) | seg[:, :, 2]
        visible = {int(i) for i in np.unique(ids)} - {0}
        return Frame(
            rgb=np.ascontiguousarray(rgb[:, :, :3], dtype=np.uint8),
            depth=depth.astype(np.float32),
            semantic=ids,
            intrinsics=self.intrinsics,
            position=[float(v) for v in position],
            rotation=[float(v) for v in rotation],
            objects={i: self.objects[i] for i in visible if i in self.objects},
        )

    def close(self) -> None:
        if getattr(self, "_renderer", None) is not None:
            self._renderer.delete()
            self._renderer = None


def _look_down(elevation: float, azimuth: float) -> np.ndarray:
    """Pose of a directional light shining down at ``elevation`` from ``azimuth`` (lights shine along -z)."""
    ce, se, ca, sa = np.cos(elevation), np.sin(elevation), np.cos(azimuth), np.sin(azimuth)
    back = np.array([ca * ce, se, sa * ce])  # the light's +z points back towards where it comes from
    right = np.cross([0.0, 1.0, 0.0], back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2] = right, up, back
    return pose
