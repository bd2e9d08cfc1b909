"""Episode loaders: hand-written fixtures of each habitat-lab format round-trip; broken ones are rejected."""

from __future__ import annotations

from pathlib import Path

import pytest

from habitat_sim_bridge.episodes import (
    EpisodeDataset,
    ObjectGoalNavEpisode,
    VLNEpisode,
    episode_path,
    load_episodes,
    load_vlnce_gt,
    save_episodes,
)
from habitat_sim_bridge.errors import EpisodeFormatError

FIX = Path(__file__).parent / "fixtures"


def test_pointnav_json_and_gz_agree():
    plain = load_episodes(FIX / "pointnav.json")
    packed = load_episodes(FIX / "pointnav.json.gz")
    assert plain == packed
    assert plain.kind == "pointnav" and len(plain.episodes) == 2
    ep = plain.episodes[0]
    assert ep.goals[0].radius == 0.2 and len(ep.goals[0].position) == 3
    assert [p.action for p in ep.shortest_paths[0]] == [1, 1, 1]
    assert plain.episodes[1].shortest_paths is None and plain.episodes[1].goals[0].radius is None


def test_scenes_dir_replaces_default_prefix():
    ds = load_episodes(FIX / "pointnav.json", scenes_dir="/scenes")
    assert ds.episodes[0].scene_id == "/scenes/habitat-test-scenes/van-gogh-room.glb"
    legacy = load_episodes(FIX / "objectnav_legacy.json", scenes_dir="/scenes")
    # ids without the default prefix are joined as they are, as habitat-lab does
    assert legacy.episodes[0].scene_id == "/scenes/mp3d/17DRP5sb8fy/17DRP5sb8fy.glb"


def test_objectnav_goals_by_category_and_id_overwrite():
    ds = load_episodes(FIX / "objectnav.json.gz")
    assert ds.kind == "objectnav"
    assert [ep.episode_id for ep in ds.episodes] == [
        "0",
        "1",
        "2",
    ]  # "ep-a".. overwritten with the index
    chair, bed, chair2 = ds.episodes
    assert isinstance(chair, ObjectGoalNavEpisode)
    assert chair.goals_key == "van-gogh-room.glb_chair"
    assert [g.object_id for g in chair.goals] == [17, 18]
    assert chair2.goals is chair.goals  # shared, as in habitat-lab
    assert [g.object_id for g in bed.goals] == [4]
    assert chair.goals[0].view_points[0].agent_state.rotation == [0, 0, 0, 1]
    assert [p.action for p in chair.shortest_paths[0]] == [
        1,
        1,
        2,
        1,
        0,
    ]  # bare ints wrapped
    assert chair.shortest_paths[0][0].position is None
    assert ds.category_to_task_category_id == {"chair": 0, "bed": 1}


def test_objectnav_legacy_layout_dedups_goals():
    ds = load_episodes(FIX / "objectnav_legacy.json")
    assert ds.category_to_scene_annotation_category_id == {"chair": 3}
    assert ds.episodes[0].episode_id == "0"
    assert ds.goals_by_category["17DRP5sb8fy.glb_chair"][0].object_id == "3_12"


def test_vln_and_gt_locations():
    ds = load_episodes(FIX / "vln_r2r.json.gz")
    assert ds.kind == "vln" and len(ds.episodes) == 2
    ep = ds.episodes[0]
    assert isinstance(ep, VLNEpisode) and ep.episode_id == 1 and ep.trajectory_id == 101
    words = ds.instruction_vocab["word_list"]
    assert " ".join(words[t] for t in ep.instruction.instruction_tokens) == ep.instruction.instruction_text
    assert len(ep.reference_path) == 11
    gt = load_vlnce_gt(FIX / "vln_r2r_gt.json.gz")
    assert len(gt["1"]["locations"]) == 58 and gt["2"]["forward_steps"] == 18
    # with gt locations the path follows the real trajectory (repeated start point collapsed)
    assert len(episode_path(ep, gt)) >= len(episode_path(ep)) >= 3  # in-place turns collapse


@pytest.mark.parametrize("name", ["pointnav.json", "objectnav.json.gz", "vln_r2r.json.gz"])
@pytest.mark.parametrize("suffix", [".json", ".json.gz"])
def test_round_trip(tmp_path, name, suffix):
    ds = load_episodes(FIX / name)
    out = save_episodes(ds, tmp_path / f"copy{suffix}")
    again = load_episodes(out)
    assert isinstance(again, EpisodeDataset)
    assert again == ds


BROKEN = {
    "pointnav_missing_start_position.json": "'episodes[0].start_position' is missing",
    "pointnav_short_position.json": "'episodes[0].start_position' must be a list of 3 numbers",
    "episodes_not_list.json": "'<top level>.episodes' must be a list",
    "objectnav_unknown_category.json": "'episodes[0].object_category' = 'sofa' has no goals",
    "objectnav_category_maps_differ.json": "must have the same categories",
    "objectnav_goal_without_object_id.json": "'goals_by_category.van-gogh-room.glb_bed[0].object_id' is missing",
    "vln_missing_instruction_text.json": "'episodes[1].instruction.instruction_text' is missing",
    "vln_bad_reference_point.json": "'episodes[0].reference_path[2]' must be a list of 3 numbers",
    "not_json.json": "not valid JSON",
    "truncated.json.gz": "corrupt gzip",
}


@pytest.mark.parametrize("name,message", sorted(BROKEN.items()))
def test_broken_fixtures_are_rejected(name, message):
    path = FIX / "broken" / name
    with pytest.raises(EpisodeFormatError) as info:
        load_episodes(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)  # the message names the file


def test_broken_gt_and_missing_file(tmp_path):
    with pytest.raises(EpisodeFormatError, match="'1.locations' is missing"):
        load_vlnce_gt(FIX / "broken" / "vln_gt_missing_locations.json.gz")
    with pytest.raises(EpisodeFormatError, match="not found"):
        load_episodes(tmp_path / "nope.json.gz")
