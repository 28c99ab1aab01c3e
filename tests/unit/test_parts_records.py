"""A large subdir's records are read from its compressed blocks (``PartsRecords``) instead of a dict of
their bytes: the mapping reads as the dict did, changes and encodings are the same bytes, and the
shards built from it are the dict's shards."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime

import pytest
from test_repodata_frames import records_of

from condagate.conda.parts_records import PartsRecords
from condagate.conda.repodata import FRAME_BYTES_ENV, RepodataParts, encode_repodata
from condagate.conda.upstream_repodata import UpstreamRecords, parse_upstream_repodata
from condagate.services.subdir_snapshot import SubdirSnapshot, encode_subdir
from condagate.store.packages import SubdirVersion
from condagate.upstream.repodata_cache import UpstreamSnapshot

MOMENT = datetime(2026, 1, 1, tzinfo=UTC)
# Names JSON must escape, and ones at the edges of the sort order.
ODD = {
    'we"ird-1.0-0.conda': b'{"name":"we\\"ird","v":1}',
    "caf\u00e9-1.0-0.tar.bz2": b'{"name":"caf\\u00e9"}',
    "0-0-0.conda": b'{"name":"0"}',
    "zzzz-9-9.conda": b'{\n  "name": "zzzz"\n}',
}


@pytest.fixture(autouse=True)
def _sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FRAME_BYTES_ENV, raising=False)


def _released(records: dict[str, bytes]) -> RepodataParts:
    parts = RepodataParts.from_records(records, compress=True)
    assert parts.is_released()
    assert all(block._records is None and block._body is None for block in parts.blocks())
    return parts


def test_the_mapping_reads_as_the_dict():
    records = {**records_of(30_000), **ODD}
    view = PartsRecords(_released(records))
    assert len(view) == len(records) and set(view) == set(records)
    assert list(view) == sorted(fn for fn in records if fn.endswith(".tar.bz2")) + sorted(
        fn for fn in records if fn.endswith(".conda")
    )
    assert dict(view.items()) == records
    for filename in [*ODD, *list(records)[::997]]:
        assert filename in view and view[filename] == records[filename] and view.get(filename) == records[filename]
    for absent in ("pkg0-0-0.conda", "", "a.zip", "zzzzz-1-1.tar.bz2", "~-1-1.conda"):
        assert absent not in view and view.get(absent) is None
        with pytest.raises(KeyError):
            view[absent]
    assert 12 not in view and view.get(12) is None  # type: ignore[comparison-overlap, call-overload]
    # More lookups one by one than the lookup memory keeps: every answer is still the dict's.
    assert all(view[filename] == records[filename] for filename in list(records)[:9_000])


def test_changes_to_released_blocks_encode_as_a_cold_build():
    records = {**records_of(30_000, seed=2), **ODD}
    parts = _released(records)
    changed = parts.copy()
    updates = {
        next(iter(records)): b'{"name":"replaced"}',
        "pkg1-1.99-new_0.conda": b'{"name":"pkg1"}',
        'we"ird-1.0-0.conda': b'{"name":"we\\"ird","v":2}',
    }
    changed.put(updates.items())
    assert changed.encode("linux-64") == encode_repodata("linux-64", {**records, **updates})
    assert parts.encode("linux-64") == encode_repodata("linux-64", records)  # the original is unchanged
    assert dict(PartsRecords(changed).items()) == {**records, **updates}


def test_same_records_tells_released_blocks_by_their_pieces():
    records = records_of(30_000, seed=3)
    one, two = _released(records), _released(dict(records))
    assert one.same_records(two)
    filename = list(records)[1234]
    other = _released({**records, filename: records[filename].replace(b'"build"', b'"build" ')})
    assert not one.same_records(other)


def test_a_large_upstream_snapshot_keeps_its_records_in_blocks_only():
    records = records_of(30_000, seed=4)
    names = {fn: fn.rsplit("-", 2)[0] for fn in records}
    parsed = UpstreamRecords("linux-64", dict(records), names, 0, (), None)
    snapshot = UpstreamSnapshot.of(1, "linux-64", parsed, 1, '"e"', 0.0)
    assert isinstance(snapshot.records, PartsRecords) and snapshot.parts is snapshot.records.parts
    assert parsed.records == {}  # the bytes are the blocks' now, not a dict's too
    assert dict(snapshot.records.items()) == records

    small = UpstreamRecords("linux-64", dict(records_of(50)), {}, 0, (), None)
    kept = UpstreamSnapshot.of(1, "linux-64", small, 1, '"e"', 0.0)
    assert kept.records is small.records and kept.parts is None  # no second copy of a small one's JSON


def test_a_refresh_checked_against_blocks_in_any_order_reads_as_against_the_dict():
    """A new document's records are looked up in the last snapshot's in the document's order, which
    need not be the blocks' (the parse reads them through one walk of the blocks)."""
    rnd = random.Random(6)
    records = {}
    for i in range(20_000):
        name, extension = f"pkg{rnd.randrange(3_000)}", ".conda" if i % 3 else ".tar.bz2"
        record = {
            "build": f"h{i:08x}_0", "build_number": 0, "depends": [f"dep{rnd.randrange(500)}"],
            "md5": rnd.randbytes(16).hex(), "name": name, "sha256": rnd.randbytes(32).hex(), "size": 1 + i,
            "subdir": "linux-64", "version": f"1.{i}",
        }
        records[f"{name}-1.{i}-h{i:08x}_0{extension}"] = json.dumps(record, separators=(",", ":")).encode()
    body = encode_repodata("linux-64", records)
    assert len(parse_upstream_repodata(body).records) == len(records)
    previous = parse_upstream_repodata(body)
    snapshot = UpstreamSnapshot.of(1, "linux-64", parse_upstream_repodata(body), 1, '"e"', 0.0)
    assert isinstance(snapshot.records, PartsRecords)
    shuffled = list(records.items())
    random.Random(6).shuffle(shuffled)
    changed = dict(shuffled[:-1])  # one gone, in another order
    document = json.dumps({"info": {"subdir": "linux-64"}, "packages": {}, "packages.conda": {}}).encode()
    document = document.replace(
        b'"packages.conda": {}',
        b'"packages.conda": {' + b",".join(json.dumps(fn).encode() + b":" + raw for fn, raw in changed.items()
                                        if fn.endswith(".conda")) + b"}",
    ).replace(
        b'"packages": {}',
        b'"packages": {' + b",".join(json.dumps(fn).encode() + b":" + raw for fn, raw in changed.items()
                                   if fn.endswith(".tar.bz2")) + b"}",
    )
    against_blocks = parse_upstream_repodata(document, checked=snapshot)
    against_dict = parse_upstream_repodata(document, checked=previous)
    assert against_blocks.records == against_dict.records == changed
    assert against_blocks.names == against_dict.names


def test_shards_from_released_blocks_are_the_dicts_shards():
    records = records_of(30_000, seed=5)
    names = {fn: fn.rsplit("-", 2)[0] for fn in records}
    parts = _released(records)
    json_encoded, zst_encoded = encode_subdir(parts, "linux-64", MOMENT)

    def snapshot(mapping) -> SubdirSnapshot:  # type: ignore[no-untyped-def]
        return SubdirSnapshot(
            subdir="linux-64", version=SubdirVersion(1, 1, None), upstream_version=(), local_records={},
            local_names={}, records=mapping, names=names, built_at=MOMENT, json=json_encoded, zst=zst_encoded,
        )

    from_blocks, from_dict = snapshot(PartsRecords(parts)), snapshot(records)
    assert {n: e[:2] for n, e in from_blocks.shards().items()} == {n: e[:2] for n, e in from_dict.shards().items()}
    assert from_blocks.shard_index().body == from_dict.shard_index().body
    digest = from_dict.shards()["pkg7"][1].hex()
    assert from_blocks.shard_by_digest(digest) == from_dict.shard_by_digest(digest)



def test_merged_pairs_walk_both_kinds_in_one_file_name_order():
    records = {**records_of(30_000, seed=9), **ODD}
    view = PartsRecords(_released(records))
    merged = list(view.merged_pairs())
    assert [filename for filename, _record in merged] == sorted(records)
    assert dict(merged) == records
