"""Procedural scenes, navigation grid, ObjectNav episodes, and the OSMesa mesh renderer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from habitat_sim_bridge import captions as cap
from habitat_sim_bridge.episodes import load_episodes, write_json
from habitat_sim_bridge.geometry import quat_from_yaw, yaw_from_quat
from habitat_sim_bridge.scenegen import (
    GeneratedScene,
    PlacedObject,
    build_navgrid,
    export_scene,
    generate_scene,
    make_objectnav_episodes,
    objectnav_dataset_json,
)


def test_yaw_quaternion_round_trip():
    for yaw in (-3.0, -1.0, 0.0, 0.5, 2.5):
        assert math.isclose(yaw_from_quat(quat_from_yaw(yaw)), yaw, abs_tol=1e-9)


def test_generated_scenes_are_deterministic_and_varied():
    a = [generate_scene(f"s{i}", np.random.default_rng(i)) for i in range(6)]
    b = [generate_scene(f"s{i}", np.random.default_rng(i)) for i in range(6)]
    assert [s.to_json() for s in a] == [s.to_json() for s in b]
    cats = {o.category for s in a for o in s.objects}
    assert len(cats) >= 6 and len({s.room_type for s in a}) >= 2
    for s in a:
        fps = [o.footprint() for o in s.objects]
        for fp in fps:  # everything stands inside the walls
            assert -s.width / 2 - 1e-6 <= fp[0] and fp[1] <= s.width / 2 + 1e-6
        assert s.navgrid.largest_component().sum() > 100  # room to walk


def test_objectnav_episodes_load_back_with_our_loader(tmp_path):
    rng = np.random.default_rng(3)
    scene = generate_scene("room", rng)
    eps, goals = make_objectnav_episodes(scene, "data/scene_datasets/gen/room.glb", rng, 4)
    assert len(eps) == 4
    path = write_json(objectnav_dataset_json([(eps, goals)]), tmp_path / "val.json.gz")
    ds = load_episodes(path, scenes_dir=str(tmp_path))
    assert ds.kind == "objectnav" and len(ds.episodes) == 4
    for ep in ds.episodes:
        assert ep.scene_id == str(tmp_path / "gen" / "room.glb")
        assert ep.goals and all(g.object_category == ep.object_category for g in ep.goals)
        pts = ep.shortest_paths[0]
        assert pts[-1].action == 0 and all(p.action in (1, 2, 3) for p in pts[:-1])
        for a, b in zip(pts, pts[1:], strict=False):  # forward steps move 0.25 m at most; turns stay in place
            step = float(np.linalg.norm(np.subtract(b.position, a.position)))
            assert step <= 0.26 if a.action == 1 else step == 0.0
            assert scene.navgrid.is_free(a.position)


def test_objectnav_names_the_goal_instance_the_path_ends_at():
    """Two plants in opposite corners: each episode's closest goal is the plant its path ends beside, and the
    agent's last pose faces that plant (not always the first plant of the scene)."""
    plants = [
        PlacedObject(10, "plant", "green", [-2.4, 0.0, -1.9], 0.0, (0.5, 1.0, 0.5)),
        PlacedObject(11, "plant", "green", [2.4, 0.0, 1.9], 0.0, (0.5, 1.0, 0.5)),
    ]
    scene = GeneratedScene(
        "two_plants", "living room", 6.0, 5.0, "white", "wooden", plants, [], build_navgrid(6.0, 5.0, plants)
    )

    def floor_distance(obj: PlacedObject, position: list[float]) -> float:  # point to axis-aligned square
        half = obj.size[0] / 2
        dx = max(abs(position[0] - obj.position[0]) - half, 0.0)
        dz = max(abs(position[2] - obj.position[2]) - half, 0.0)
        return math.hypot(dx, dz)

    eps, _ = make_objectnav_episodes(scene, "gen/two_plants.glb", np.random.default_rng(5), 12)
    assert len(eps) == 12
    named = []
    for ep in eps:
        last = ep["shortest_paths"][0][-1]
        goal_id = ep["info"]["closest_goal_object_id"]
        by_id = {o.instance_id: o for o in plants}
        dist = {i: floor_distance(o, last["position"]) for i, o in by_id.items()}
        assert dist[goal_id] <= 1.0 + 1e-6 and dist[goal_id] == min(dist.values()), (goal_id, dist)
        goal = by_id[goal_id]
        to_goal = math.atan2(-(goal.position[0] - last["position"][0]), -(goal.position[2] - last["position"][2]))
        off = (yaw_from_quat(last["rotation"]) - to_goal + math.pi) % (2 * math.pi) - math.pi
        assert abs(off) < math.radians(15), f"episode {ep['episode_id']} ends facing {math.degrees(off):.0f} deg off"
        named.append(goal_id)
    assert set(named) == {10, 11}  # both plants are reached, so the choice between them is exercised


@pytest.fixture(scope="module")
def rendered(needs_osmesa, tmp_path_factory):
    from habitat_sim_bridge.sources.mesh import MeshSource

    rng = np.random.default_rng(11)
    scene = generate_scene("living", rng, room_type="living room")
    glb = export_scene(scene, tmp_path_factory.mktemp("scene"))
    eps, _ = make_objectnav_episodes(scene, glb.name, rng, 2)
    with MeshSource(glb, width=160, height=120) as src:
        last = eps[0]["shortest_paths"][0][-1]
        frames = [src.render(last["position"], last["rotation"])]
        frames += [src.render([0.0, 0.0, 0.0], quat_from_yaw(y)) for y in (0.0, math.pi / 2, math.pi, -math.pi / 2)]
        yield scene, eps, src, frames


def test_mesh_render_outputs(rendered):
    scene, eps, src, frames = rendered
    f = frames[0]
    assert f.rgb.shape == (120, 160, 3) and f.rgb.dtype == np.uint8
    assert f.depth.shape == (120, 160) and f.depth.dtype == np.float32
    assert f.semantic.shape == (120, 160)
    assert f.intrinsics.k[0] == pytest.approx(80.0)  # hfov 90 -> fx = width / 2
    inside = f.depth[f.depth > 0]
    assert inside.size > 0.95 * f.depth.size and inside.max() < math.hypot(scene.width, scene.depth) + 0.5
    # the episode ends facing its goal: the goal category is in view
    goal = eps[0]["object_category"]
    assert goal in {s.category for s in cap.visible_objects(f, min_fraction=0.001)}


def test_mesh_frames_look_like_rooms(rendered):
    scene, _, src, frames = rendered
    seen = set()
    for f in frames[1:]:
        cats = {src.objects[i].category for i in f.objects}
        assert {"wall", "floor"} <= cats
        seen |= {s.category for s in cap.visible_objects(f)}
        assert f.rgb.std() > 10  # not a flat image
    # looking around from the centre shows most of the furniture
    assert len(seen) >= min(3, len({o.category for o in scene.objects}))


def test_simple_room_z_up_asset(needs_osmesa, habitat_data):
    from habitat_sim_bridge.sources.mesh import MeshSource

    with MeshSource(habitat_data / "simple_room.glb", width=80, height=60, up="z") as src:
        f = src.render([0.0, 0.0, 0.0], quat_from_yaw(0.0))
    # z-up turned y-up: the floor is below the camera, so the bottom rows hit geometry
    assert (f.depth[-5:] > 0).all()
