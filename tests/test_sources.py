"""Tests for the sources stage (keys, labels, AudioSet lists, manifests, media lookup, records) on real files."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.audioset import read_segments
from pipeline.keys import make_key
from pipeline.labels import LabelClass, load_labels
from pipeline.listfiles import SourceError
from pipeline.manifests import read_manifest, vggsound_to_manifest
from pipeline.media import resolve_media
from pipeline.records import ClipRow, RowFailure, as_dict, schema

# Rows out of index order, and a display name holding a comma.
LABELS_CSV = """index,mid,display_name
2,/m/c,"Male speech, man speaking"
0,/m/a,"Speech"
1,/m/b,"Dog"
3,/m/d,"Bark"
"""

SEGMENTS_CSV = """# Segments csv created Sun Mar  5 10:54:31 2017
# num_ytids=9, num_segs=9, num_unique_labels=4, num_positive_labels=10
# YTID, start_seconds, end_seconds, positive_labels
--4gqARaEJE, 0.000, 10.000, "/m/c,/m/a"
-0_aB_cDeF1, 30.000, 40.000, "/m/b"
--4gqARaEJE, 30.000, 40.000, "/m/d"
--4gqARaEJE, 0.000, 10.000, "/m/b"
badline, 1.000
abc, x, 10.000, "/m/a"
abd, 10.000, 5.000, "/m/a"
abe, 0.000, 10.000, "/m/a,/m/zzz"
abf, 0.000, 10.000, ""
"""
SEGMENT_DATA_LINES = 9


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def classes(tmp_path: Path) -> list[LabelClass]:
    return load_labels(write(tmp_path / "class_labels_indices.csv", LABELS_CSV))


def one_line_naming(err: pytest.ExceptionInfo[SourceError], path: Path) -> None:
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message


# ---------------------------------------------------------------------------- labels


def test_labels_sorted_by_index_with_commas_in_names(classes: list[LabelClass]) -> None:
    assert [(c.index, c.mid, c.name) for c in classes] == [
        (0, "/m/a", "Speech"),
        (1, "/m/b", "Dog"),
        (2, "/m/c", "Male speech, man speaking"),
        (3, "/m/d", "Bark"),
    ]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (None, "not found"),
        ("", "empty"),
        ("id,mid,name\n0,/m/a,A\n", "header"),
        ("index,mid,display_name\n", "no classes"),
        ("index,mid,display_name\n0,/m/a,A\n0,/m/b,B\n", ":3: index 0 already on line 2"),
        ("index,mid,display_name\n0,/m/a,A\n1,/m/a,B\n", ":3: MID '/m/a' already on line 2"),
        ("index,mid,display_name\n0,/m/a,A\n2,/m/b,B\n", "index 1 is missing"),
        ("index,mid,display_name\n0,/m/a,A, B\n", ":2 has 4 fields"),
    ],
)
def test_labels_errors_are_one_line_naming_the_file(tmp_path: Path, text: str | None, fragment: str) -> None:
    path = tmp_path / "labels.csv"
    if text is not None:
        write(path, text)
    with pytest.raises(SourceError) as err:
        load_labels(path)
    one_line_naming(err, path)
    assert fragment in str(err.value)


# ---------------------------------------------------------------------------- keys


def test_keys_are_dot_free_stable_and_distinct() -> None:
    assert make_key("--4gqARaEJE", 30.0) == "--4gqARaEJE_30000"
    assert make_key("--4gqARaEJE", 30.0) == make_key("--4gqARaEJE", 30.0000001)
    assert make_key("-0_aB_cDeF1", None) == "-0_aB_cDeF1"
    pairs = [
        ("--4gqARaEJE", 0.0),
        ("--4gqARaEJE", 30.0),
        ("--4gqARaEJE", 0.5),
        ("--4gqARaEJE", None),
        ("--4gqARaEJE_30000", None),  # must not read as ("--4gqARaEJE", 30.0)
        ("--4gqARaEJE_", None),
        ("a.b", None),
        ("a-b", None),
        ("a/b", None),
        ("a b", None),
        ("a-b-h0123456789abcdef", None),  # looks like a hashed form
        ("clip.v2.final", 1.25),
    ]
    keys = [make_key(ytid, start) for ytid, start in pairs]
    assert len(set(keys)) == len(keys)
    for key in keys:
        assert "." not in key and "/" not in key
        assert all(ch.isascii() and (ch.isalnum() or ch in "_-") for ch in key)
    with pytest.raises(ValueError):
        make_key("x", -1.0)


# ---------------------------------------------------------------------------- segments


def test_read_segments_rows_failures_and_accounting(
    tmp_path: Path, classes: list[LabelClass]
) -> None:
    rows, failures = read_segments([write(tmp_path / "bal.csv", SEGMENTS_CSV)], classes)
    assert len(rows) + len(failures) == SEGMENT_DATA_LINES
    assert rows == [
        # The quoted label list stays one field; labels are indexes from the labels file, sorted.
        ClipRow("--4gqARaEJE_0", "--4gqARaEJE", 0.0, 10.0, (0, 2), None, "bal.csv:4"),
        ClipRow("-0_aB_cDeF1_30000", "-0_aB_cDeF1", 30.0, 40.0, (1,), None, "bal.csv:5"),
        ClipRow("--4gqARaEJE_30000", "--4gqARaEJE", 30.0, 40.0, (3,), None, "bal.csv:6"),
    ]
    by_source = {f.source: f for f in failures}
    assert {s: f.error for s, f in by_source.items()} == {
        "bal.csv:7": "duplicate",
        "bal.csv:8": "malformed_row",
        "bal.csv:9": "malformed_row",
        "bal.csv:10": "malformed_row",
        "bal.csv:11": "unknown_label:/m/zzz",
        "bal.csv:12": "no_labels",
    }
    assert "bal.csv:4" in by_source["bal.csv:7"].message
    assert all(f.stage == "source" and "\n" not in f.message for f in failures)
    assert (by_source["bal.csv:11"].ytid, by_source["bal.csv:11"].start) == ("abe", 0.0)


def test_duplicates_across_files(tmp_path: Path, classes: list[LabelClass]) -> None:
    first = write(tmp_path / "a.csv", '# h\nxyz, 0.000, 10.000, "/m/a"\n')
    second = write(tmp_path / "b.csv", 'xyz, 0.000, 10.000, "/m/b"\nxyz, 10.000, 20.000, "/m/b"\n')
    rows, failures = read_segments([first, second], classes)
    assert [r.source for r in rows] == ["a.csv:2", "b.csv:2"]
    assert [(f.error, f.source) for f in failures] == [("duplicate", "b.csv:1")]


def test_segments_unclosed_quote_does_not_swallow_next_row(
    tmp_path: Path, classes: list[LabelClass]
) -> None:
    path = write(tmp_path / "s.csv", 'aaa, 0.000, 10.000, "/m/a\nbbb, 0.000, 10.000, "/m/b"\n')
    rows, failures = read_segments([path], classes)
    assert [r.ytid for r in rows] == ["bbb"]
    assert [(f.error, f.source) for f in failures] == [("malformed_row", "s.csv:1")]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (None, "not found"),
        ("", "no usable row (0 data rows)"),
        ("# only a header\n", "no usable row (0 data rows)"),
        ("index,mid,display_name\n0,/m/a,Speech\n", "first failure at s.csv:1"),
    ],
)
def test_unusable_segments_file_is_a_source_error(
    tmp_path: Path, classes: list[LabelClass], text: str | None, fragment: str
) -> None:
    path = tmp_path / "s.csv"
    if text is not None:
        write(path, text)
    with pytest.raises(SourceError) as err:
        read_segments([path], classes)
    one_line_naming(err, path)
    assert fragment in str(err.value)


# ---------------------------------------------------------------------------- manifests


def test_manifest_csv(tmp_path: Path, classes: list[LabelClass]) -> None:
    (tmp_path / "m").mkdir()
    path = write(
        tmp_path / "m" / "manifest.csv",
        "path,labels,start,end,key,note\n"
        'clips/a.mp4,"Male speech, man speaking",,,,x\n'  # a display name with a comma, whole
        "/abs/b.mp4,/m/a;Dog,1.5,11.5,,\n"  # ';' list: MID and display name
        'c.mp4,"3,0",,,my.key,\n'  # ',' list of indexes; key names the clip
        "d.mp4,Cat,,,,\n"
        "e.mp4,,,,,\n"
        "f.mp4,Dog,5,2,,\n"
        "g.mp4,Dog\n"
        "clips/a.mp4,Dog,,,,\n",
    )
    rows, failures = read_manifest(path, classes)
    folder = str(tmp_path / "m")
    assert rows == [
        ClipRow("a", "a", None, None, (2,), f"{folder}/clips/a.mp4", "manifest.csv:2"),
        ClipRow("b_1500", "b", 1.5, 11.5, (0, 1), "/abs/b.mp4", "manifest.csv:3"),
        ClipRow(make_key("my.key", None), "my.key", None, None, (0, 3), f"{folder}/c.mp4", "manifest.csv:4"),
    ]
    assert [(f.error, f.source) for f in failures] == [
        ("unknown_label:Cat", "manifest.csv:5"),
        ("no_labels", "manifest.csv:6"),
        ("malformed_row", "manifest.csv:7"),
        ("malformed_row", "manifest.csv:8"),
        ("duplicate", "manifest.csv:9"),
    ]


def test_manifest_parquet_list_column(tmp_path: Path, classes: list[LabelClass]) -> None:
    path = tmp_path / "manifest.parquet"
    table = pa.table(
        {
            "path": ["x.wav", "y.wav", "z.wav"],
            "labels": pa.array([["/m/d", "Speech"], ["1"], ["nope"]]),
            "start": [0.0, None, 2.0],
        }
    )
    pq.write_table(table, path)
    rows, failures = read_manifest(path, classes)
    assert [(r.key, r.labels, r.start, r.path, r.source) for r in rows] == [
        ("x_0", (0, 3), 0.0, str(tmp_path / "x.wav"), "manifest.parquet:1"),
        ("y", (1,), None, str(tmp_path / "y.wav"), "manifest.parquet:2"),
    ]
    assert [(f.error, f.source) for f in failures] == [("unknown_label:nope", "manifest.parquet:3")]
    pq.write_table(pa.table({"path": ["w.wav", "v.wav"], "labels": [[3, 1], [7]]}), path)
    rows, failures = read_manifest(path, classes)
    assert [r.labels for r in rows] == [(1, 3)]
    assert [f.error for f in failures] == ["unknown_label:7"]


def test_manifest_errors(tmp_path: Path, classes: list[LabelClass]) -> None:
    for name, text, fragment in [
        ("gone.csv", None, "not found"),
        ("empty.csv", "", "empty"),
        ("nolabels.csv", "path,label\na.mp4,Dog\n", "no 'labels' column"),
        ("allbad.csv", "path,labels\na.mp4,Cat\n", "no usable row"),
        ("broken.parquet", "not parquet", "not a readable Parquet file"),
    ]:
        path = tmp_path / name
        if text is not None:
            write(path, text)
        with pytest.raises(SourceError) as err:
            read_manifest(path, classes)
        one_line_naming(err, path)
        assert fragment in str(err.value)


def test_vggsound_manifest_reads_like_audioset(tmp_path: Path) -> None:
    vgg = write(
        tmp_path / "vggsound.csv",
        "--4gqARaEJE,30,dog barking,train\n"
        '-0_aB_cDeF1,0,"cattle, bovinae cowbell",train\n'
        "zzzzzzzzzzz,5,airplane,test\n",  # only in test, still a class of the shared list
    )
    manifest, classes = vggsound_to_manifest(vgg, tmp_path / "media", tmp_path / "out" / "train.csv")
    assert [c.name for c in classes] == ["airplane", "cattle, bovinae cowbell", "dog barking"]
    assert load_labels(tmp_path / "out" / "class_labels_indices.csv") == classes
    rows, failures = read_manifest(manifest, classes)
    assert failures == []
    media = str(tmp_path / "media")
    assert rows == [
        ClipRow(
            "--4gqARaEJE_30000",
            "--4gqARaEJE",
            30.0,
            None,
            (2,),
            f"{media}/--4gqARaEJE_000030.mp4",
            "train.csv:2",
        ),
        ClipRow(
            "-0_aB_cDeF1_0", "-0_aB_cDeF1", 0.0, None, (1,), f"{media}/-0_aB_cDeF1_000000.mp4", "train.csv:3"
        ),
    ]
    with pytest.raises(SourceError, match="no row of split 'val'"):
        vggsound_to_manifest(vgg, tmp_path / "media", tmp_path / "out" / "val.csv", split="val")
    bad = write(tmp_path / "bad.csv", "--4gqARaEJE,30.5,dog barking,train\n")
    with pytest.raises(SourceError, match=r"bad\.csv:1"):
        vggsound_to_manifest(bad, tmp_path / "media", tmp_path / "out" / "bad.csv")


# ---------------------------------------------------------------------------- media


def segment(ytid: str, start: float = 30.0, path: str | None = None) -> ClipRow:
    return ClipRow(make_key(ytid, start), ytid, start, start + 10, (0,), path, "s.csv:1")


def test_resolve_media_default_names_and_single_listing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    media = tmp_path / "media"
    media.mkdir()
    for name in ["--4gqARaEJE.mp4", "--4gqARaEJE.wav", "Y-0_aB_cDeF1.wav", "notes.txt"]:
        (media / name).touch()
    (tmp_path / "elsewhere.mkv").touch()
    listed: list[str] = []
    real_listdir = os.listdir
    monkeypatch.setattr(os, "listdir", lambda folder: listed.append(folder) or real_listdir(folder))
    rows = [
        segment("--4gqARaEJE"),
        segment("-0_aB_cDeF1"),
        segment("notes"),
        segment("gone"),
        segment("m1", path=str(tmp_path / "elsewhere.mkv")),
        segment("m2", path=str(tmp_path / "missing.mkv")),
    ]
    found, failures = resolve_media(rows, media)
    assert [(r.ytid, r.path) for r in found] == [
        ("--4gqARaEJE", str(media / "--4gqARaEJE.mp4")),  # .mp4 before .wav, as in exts
        ("-0_aB_cDeF1", str(media / "Y-0_aB_cDeF1.wav")),
        ("m1", str(tmp_path / "elsewhere.mkv")),
    ]
    assert [(f.ytid, f.error, f.stage) for f in failures] == [
        ("notes", "missing_file", "source"),
        ("gone", "missing_file", "source"),
        ("m2", "missing_file", "source"),
    ]
    assert sorted(listed) == sorted([str(media), str(tmp_path)])  # each folder once


def test_resolve_media_pattern(tmp_path: Path) -> None:
    (tmp_path / "--4gqARaEJE_30.000_40.000.flac").touch()
    (tmp_path / "-0_aB_cDeF1-30000.mp4").touch()
    found, failures = resolve_media(
        [segment("--4gqARaEJE"), segment("other")], tmp_path, pattern="{ytid}_{start}_{end}.flac"
    )
    assert [r.path for r in found] == [str(tmp_path / "--4gqARaEJE_30.000_40.000.flac")]
    assert [f.ytid for f in failures] == ["other"]
    found, _ = resolve_media([segment("-0_aB_cDeF1")], tmp_path, pattern="{ytid}-{start_ms}.mp4")
    assert [r.path for r in found] == [str(tmp_path / "-0_aB_cDeF1-30000.mp4")]
    with pytest.raises(SourceError, match="use only"):
        resolve_media([], tmp_path, pattern="{id}.mp4")


def test_resolve_media_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as err:
        resolve_media([segment("x")], tmp_path / "nope")
    one_line_naming(err, tmp_path / "nope")
    with pytest.raises(SourceError, match="URI"):
        resolve_media([segment("x", path="s3://bucket/x.mp4")], tmp_path)


# ---------------------------------------------------------------------------- tables


def to_table(records, record) -> pa.Table:
    return pa.Table.from_pylist([as_dict(r) for r in records], schema=schema(record))


def test_tables(classes: list[LabelClass], tmp_path: Path) -> None:
    rows, failures = read_segments([write(tmp_path / "bal.csv", SEGMENTS_CSV)], classes)
    table = to_table(rows, ClipRow)
    assert table.schema == schema(ClipRow)
    assert table.schema.field("start_seconds").type == pa.float64()
    assert table.column("labels").to_pylist()[0] == [0, 2]
    assert table.column("path").to_pylist() == [None, None, None]
    failed = to_table(failures, RowFailure)
    assert failed.column_names == [
        "key",
        "ytid",
        "start_seconds",
        "end_seconds",
        "stage",
        "error",
        "message",
        "source",
    ]
    assert failed.num_rows == len(failures)
    assert failed.column("key").to_pylist() == [make_key(f.ytid, f.start) for f in failures]
    assert to_table([], ClipRow).num_rows == 0
