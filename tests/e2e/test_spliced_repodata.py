"""A large subdir's repodata.json.zst is one zstd frame spliced from blocks compressed one by one (so
that a change re-compresses one block; ``conda.zstd_splice``): every client reads all of it, and the
JSON is the same bytes. CONDAGATE_REPODATA_FRAME_BYTES=1 makes each record its own block, so small
feeds take the large-subdir path."""

from __future__ import annotations

import bz2
import hashlib
import io
import json
import random
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import zstandard

from condagate.conda.zstd_splice import SEPARATOR
from condagate.upstream.repodata_fetch import decompress_zstd
from zstd_readers import conda_decodes, frames_in

from conftest import upload
from rattler_client import query, solve_and_install
from servers import Server, start_server, wait_until
from upstream_channel import UpstreamChannel

FRAMED = {"CONDAGATE_REPODATA_FRAME_BYTES": "1"}


@pytest.fixture(scope="module")
def framed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("framed") / "data", extra_env=FRAMED)
    yield server
    server.stop()


def new_feed(server: Server, connectors: list[str] | None = None) -> str:
    name = "feed-" + uuid.uuid4().hex[:10]
    with server.admin() as client:
        response = client.post("/api/feeds", json={"name": name, "connectors": connectors or []})
        assert response.status_code == 201, response.text
    return name


def new_proxy_feed(server: Server, url: str) -> str:
    connector = "up-" + uuid.uuid4().hex[:8]
    with server.admin() as client:
        assert client.post("/api/connectors", json={"name": connector, "url": url}).status_code == 201
    return new_feed(server, [connector])


def test_every_decoder_reads_the_spliced_frame_and_the_variants_agree(framed: Server, make_package):
    feed = new_feed(framed)
    files = [make_package(extension=".conda" if i % 2 else ".tar.bz2") for i in range(5)]
    for path in files:
        assert upload(framed, feed, path).status_code == 201
    base = f"/conda/{feed}/noarch/"
    with framed.client() as client:
        variants = ("repodata.json", "repodata.json.zst", "repodata.json.bz2")
        plain, zst, bz = (client.get(base + name) for name in variants)
        assert plain.status_code == zst.status_code == bz.status_code == 200
        listed = plain.json()
        assert {*listed["packages"], *listed["packages.conda"]} == {path.name for path in files}
        assert frames_in(zst.content) == 1  # rattler reads the first frame only
        assert plain.content.count(SEPARATOR) == len(files) + 2  # after the head, each record, the middle
        assert conda_decodes(zst.content) == plain.content
        assert zstandard.ZstdDecompressor().decompress(zst.content) == plain.content
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(zst.content), read_across_frames=True)
        assert reader.read() == plain.content
        assert decompress_zstd(zst.content) == plain.content  # condagate's own upstream reader
        assert bz2.decompress(bz.content) == plain.content
        for response in (plain, zst):
            head = client.head(base + response.url.path.rsplit("/", 1)[1])
            assert head.status_code == 200 and head.content == b""
            assert int(head.headers["content-length"]) == len(response.content)
            assert head.headers["etag"] == response.headers["etag"]
            again = client.get(response.url.path, headers={"If-None-Match": response.headers["etag"]})
            assert again.status_code == 304 and again.content == b""


@pytest.mark.skipif(shutil.which("zstd") is None, reason="the zstd command-line tool is not installed")
def test_the_zstd_command_line_tool_reads_the_spliced_frame(framed: Server, make_package):
    feed = new_feed(framed)
    for _ in range(3):
        assert upload(framed, feed, make_package()).status_code == 201
    with framed.client() as client:
        plain = client.get(f"/conda/{feed}/noarch/repodata.json").content
        zst = client.get(f"/conda/{feed}/noarch/repodata.json.zst").content
    assert SEPARATOR in plain
    decoded = subprocess.run(["zstd", "-d", "-c", "-q"], input=zst, capture_output=True, check=True).stdout
    assert decoded == plain


def test_a_change_and_a_restart_give_the_bytes_and_etag_of_a_cold_build(tmp_path: Path, make_package):
    """Frames are cut where the records say, not where the history of changes left them: the server
    that took the uploads one by one and a fresh one building from the database serve the same .zst."""
    server = start_server(tmp_path / "data", extra_env=FRAMED)
    try:
        feed = new_feed(server)
        for _ in range(4):
            assert upload(server, feed, make_package()).status_code == 201
        with server.client() as client:
            first = client.get(f"/conda/{feed}/noarch/repodata.json.zst")
            added = make_package(extension=".tar.bz2")
            assert upload(server, feed, added).status_code == 201
            second = client.get(f"/conda/{feed}/noarch/repodata.json.zst")
            plain = client.get(f"/conda/{feed}/noarch/repodata.json")
        assert second.headers["etag"] != first.headers["etag"]
        assert added.name in conda_decodes(second.content).decode()
        assert conda_decodes(second.content) == plain.content
    finally:
        server.stop()
    again = start_server(server.data_dir, extra_env=FRAMED)
    try:
        with again.client() as client:
            cold = client.get(f"/conda/{feed}/noarch/repodata.json.zst")
            cold_plain = client.get(f"/conda/{feed}/noarch/repodata.json")
        assert cold.content == second.content and cold.headers["etag"] == second.headers["etag"]
        assert cold_plain.content == plain.content and cold_plain.headers["etag"] == plain.headers["etag"]
    finally:
        again.stop()


def test_rattler_solves_and_condagate_proxies_spliced_repodata(
    framed: Server, server: Server, upstream: UpstreamChannel, make_package, tmp_path: Path
):
    feed = new_proxy_feed(framed, upstream.url)
    local = make_package("localtool", version="1.0", subdir="linux-64")
    assert upload(framed, feed, local).status_code == 201  # laid over the upstream's records
    channel = f"{framed.url}/conda/{feed}"
    with framed.client() as client:
        zst = client.get(f"/conda/{feed}/linux-64/repodata.json.zst").content
    assert frames_in(zst) == 1 and SEPARATOR in conda_decodes(zst)
    installed = solve_and_install(channel, ["numpy", "localtool"], tmp_path / "env")
    assert installed == ["localtool=1.0=0", "numpy=2.0.0=py311h0_0", "python=3.11.9=h0_0"]
    records = query(channel, ["numpy", "localtool"])
    assert query(channel, ["numpy", "localtool"], sharded=True) == records
    # condagate proxying condagate: the second server reads the first one's spliced .zst.
    proxied = new_proxy_feed(server, channel)
    assert query(f"{server.url}/conda/{proxied}", ["numpy", "localtool"]) == records


def large_repodata(records: int) -> bytes:
    """A conda-forge-like linux-64 repodata of ``records`` records (the package files do not exist)."""
    packages = {}
    for i in range(records):
        name = f"lib{i % 3000}"
        record = {
            "build": f"h{i:08x}_0",
            "build_number": 0,
            "depends": [f"lib{(i * 7) % 3000} >=1.{i % 9}", "libgcc-ng >=12", "python >=3.9,<3.13.0a0"],
            "license": "MIT",
            "md5": f"{i:032x}",
            "name": name,
            "sha256": f"{i:064x}",
            "size": 1000 + i,
            "subdir": "linux-64",
            "timestamp": 1_700_000_000_000 + i,
            "version": f"1.{i // 3000}",
        }
        packages[f"{name}-1.{i // 3000}-h{i:08x}_0.conda"] = record
    document = {"info": {"subdir": "linux-64"}, "packages": {}, "packages.conda": packages, "repodata_version": 1}
    return json.dumps(document).encode()


def test_a_large_proxied_subdir_is_spliced_sent_in_chunks_and_survives_changes(
    tmp_path: Path, upstream: UpstreamChannel, make_package
):
    """Past 4 MiB of JSON, the default path: blocks spliced into one frame, the JSON sent as its blocks."""
    body = large_repodata(40_000)  # ~13 MB of JSON: spliced, and past the size from which it is never joined
    (upstream.root / "linux-64").mkdir(parents=True, exist_ok=True)
    (upstream.root / "linux-64" / "repodata.json").write_bytes(body)
    (upstream.root / "linux-64" / "repodata.json.zst").write_bytes(zstandard.ZstdCompressor().compress(body))
    server = start_server(tmp_path / "data")
    try:
        feed = new_proxy_feed(server, upstream.url)
        base = f"/conda/{feed}/linux-64/"
        with server.client() as client:
            plain = client.get(base + "repodata.json")
            zst = client.get(base + "repodata.json.zst")
            assert plain.status_code == zst.status_code == 200
            assert json.loads(plain.content)["packages.conda"] == json.loads(body)["packages.conda"]
            assert SEPARATOR in plain.content and frames_in(zst.content) == 1
            assert conda_decodes(zst.content) == plain.content
            head = client.head(base + "repodata.json")
            assert int(head.headers["content-length"]) == len(plain.content) and head.content == b""
            assert head.headers["etag"] == plain.headers["etag"]
            unchanged = client.get(base + "repodata.json", headers={"If-None-Match": plain.headers["etag"]})
            assert unchanged.status_code == 304
            added = make_package("localextra", subdir="linux-64")
            assert upload(server, feed, added).status_code == 201
            after = client.get(base + "repodata.json.zst")
            assert after.headers["etag"] != zst.headers["etag"]
            assert added.name in json.loads(conda_decodes(after.content))["packages.conda"]
            assert conda_decodes(after.content) == client.get(base + "repodata.json").content
        found = set(query(f"{server.url}/conda/{feed}", ["localextra", "lib7"]))  # and their dependencies
        assert {"localextra=1.0=0", *(f"lib7=1.{k}=h{7 + 3000 * k:08x}_0" for k in range(14))} <= found
    finally:
        server.stop()
    again = start_server(server.data_dir)  # a cold build from the kept upstream copy and the database
    try:
        with again.client() as client:
            cold = client.get(base + "repodata.json.zst")
        assert cold.content == after.content and cold.headers["etag"] == after.headers["etag"]
    finally:
        again.stop()


def _encoded_files(server: Server) -> dict[str, bytes]:
    """ETag -> bytes of the files in DATA_DIR/encoded (named FEED_ID-SUBDIR.ETAG)."""
    folder = server.data_dir / "encoded"
    if not folder.is_dir():
        return {}
    return {'"' + path.name.split(".", 1)[1] + '"': path.read_bytes() for path in folder.iterdir() if path.is_file()}


def _shard_files(server: Server) -> dict[str, bytes]:
    """hex digest -> bytes of the shard files in DATA_DIR/encoded/shards (one feed's folder)."""
    folder = server.data_dir / "encoded" / "shards"
    if not folder.is_dir():
        return {}
    return {
        path.name.removesuffix(".msgpack.zst"): path.read_bytes()
        for feed_folder in folder.iterdir()
        for path in feed_folder.iterdir()
    }


def _shard_index(client, base: str) -> dict[str, str]:
    response = client.get(base + "repodata_shards.msgpack.zst")
    assert response.status_code == 200
    index = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(response.content))
    return {name: digest.hex() for name, digest in index["shards"].items()}


def test_a_large_subdirs_shards_are_files_on_the_host_that_every_worker_sends(tmp_path: Path, make_package):
    """A large subdir's shard bodies are not kept in the workers: one file per shard, named by its digest,
    that every worker reads; an upload writes the shards of its package name only."""
    server = start_server(tmp_path / "data", extra_env={**FRAMED, "CONDAGATE_WORKERS": "2"})
    try:
        feed = new_feed(server)
        packages = [make_package() for _ in range(4)]
        for path in packages:
            assert upload(server, feed, path).status_code == 201
        base = f"/conda/{feed}/noarch/"
        with server.client() as client:
            assert _shard_files(server) == {}
            indexes = [_shard_index(client, base) for _ in range(6)]  # over both workers
            index = indexes[0]
            assert all(other == index for other in indexes) and len(index) == 4
            # One file per shard, no temp file left (written after the answers, on a writer thread).
            assert wait_until(lambda: set(_shard_files(server)) == set(index.values())), _shard_files(server)
            for name, digest in index.items():
                answers = [client.get(f"{base}shards/{digest}.msgpack.zst") for _ in range(4)]
                assert {a.status_code for a in answers} == {200}
                assert all(hashlib.sha256(a.content).hexdigest() == digest for a in answers)
                shard = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(answers[0].content))
                assert {r["name"] for r in shard["packages.conda"].values()} == {name}
            before = _shard_files(server)
            added = make_package(name=next(iter(index)), version="9.9")
            assert upload(server, feed, added).status_code == 201
            after = _shard_index(client, base)
            changed = {name for name in after if after[name] != index[name]}
            assert changed == {next(iter(index))}
            expected = {after[name] for name in changed}
            assert wait_until(lambda: set(_shard_files(server)) - set(before) == expected), _shard_files(server)
            new_shard = client.get(f"{base}shards/{after[next(iter(index))]}.msgpack.zst")
            assert new_shard.status_code == 200 and added.name.encode() in zstandard.ZstdDecompressor().decompress(
                new_shard.content
            )
    finally:
        server.stop()


def test_a_large_subdirs_json_is_one_file_on_the_host_that_every_worker_sends(tmp_path: Path, make_package):
    """A large subdir's JSON is not kept in the workers: it is decompressed from the .zst once per change
    into a file of this host named by its ETag, which every worker sends (and HEAD, 304 and Range answer
    from its ETag and size, as for any file)."""
    server = start_server(tmp_path / "data", extra_env={**FRAMED, "CONDAGATE_WORKERS": "2"})
    try:
        feed = new_feed(server)
        for _ in range(3):
            assert upload(server, feed, make_package()).status_code == 201
        base = f"/conda/{feed}/noarch/"
        with server.client() as client:
            assert _encoded_files(server) == {}  # nothing written before a JSON is asked for
            head = client.head(base + "repodata.json")
            assert head.status_code == 200 and _encoded_files(server) == {}  # HEAD needs only the size
            zst = client.get(base + "repodata.json.zst").content
            answers = [client.get(base + "repodata.json") for _ in range(12)]  # over both workers
            assert {a.status_code for a in answers} == {200}
            plain = answers[0].content
            assert all(a.content == plain for a in answers) and conda_decodes(zst) == plain
            etag = answers[0].headers["etag"]
            assert int(head.headers["content-length"]) == len(plain) and head.headers["etag"] == etag
            assert _encoded_files(server) == {etag: plain}  # one file, named by the ETag, no temp file
            assert client.get(base + "repodata.json", headers={"If-None-Match": etag}).status_code == 304
            part = client.get(base + "repodata.json", headers={"Range": "bytes=0-9"})
            assert part.status_code == 206 and part.content == plain[:10]
            assert bz2.decompress(client.get(base + "repodata.json.bz2").content) == plain

            added = make_package()
            assert upload(server, feed, added).status_code == 201
            after = client.get(base + "repodata.json")
            assert after.status_code == 200 and after.headers["etag"] != etag
            assert added.name in after.json()["packages.conda"] and after.content != plain
            files = _encoded_files(server)
            assert files[after.headers["etag"]] == after.content and len(files) == 2  # the old one lingers a while
    finally:
        server.stop()


def test_a_removed_json_file_is_written_again(tmp_path: Path, make_package):
    server = start_server(tmp_path / "data", extra_env=FRAMED)
    try:
        feed = new_feed(server)
        assert upload(server, feed, make_package()).status_code == 201
        url = f"/conda/{feed}/noarch/repodata.json"
        with server.client() as client:
            first = client.get(url)
            (path,) = (server.data_dir / "encoded").iterdir()
            path.unlink()  # an operator clearing the folder, a full disk's clean-up
            again = client.get(url)
        assert again.status_code == 200 and again.content == first.content
        assert _encoded_files(server) == {first.headers["etag"]: first.content}
    finally:
        server.stop()


def test_where_the_json_file_cannot_be_written_the_json_is_sent_all_the_same(tmp_path: Path, make_package):
    data = tmp_path / "data"
    data.mkdir()
    (data / "encoded").write_bytes(b"not a folder")  # as a full disk would: the file cannot be written
    server = start_server(data, extra_env=FRAMED)
    try:
        feed = new_feed(server)
        assert upload(server, feed, make_package()).status_code == 201
        with server.client() as client:
            zst = client.get(f"/conda/{feed}/noarch/repodata.json.zst")
            plain = client.get(f"/conda/{feed}/noarch/repodata.json")
        assert plain.status_code == 200 and plain.content == conda_decodes(zst.content)
        assert int(plain.headers["content-length"]) == len(plain.content)
        assert plain.headers["etag"] != zst.headers["etag"]
        assert "could not write the JSON" in server.log()
    finally:
        server.stop()


def _worker_memory_kib(server: Server) -> tuple[int, int]:
    """(VmRSS, VmHWM) of the server's largest process (granian's worker), KiB."""
    pids, todo = [], [server.process.pid]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        for children in Path(f"/proc/{pid}/task").glob("*/children"):
            todo.extend(int(child) for child in children.read_text().split())

    def field(pid: int, name: str) -> int:
        line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith(name))
        return int(line.split()[1])

    return max(field(pid, "VmRSS:") for pid in pids), max(field(pid, "VmHWM:") for pid in pids)


def test_an_indexers_document_is_read_piece_by_piece_with_the_whole_parses_outcome(
    tmp_path: Path, upstream: UpstreamChannel
):
    """conda-index writes repodata with its keys sorted: condagate reads such a document piece by piece,
    so the worker never holds it whole, and serves what it serves for the same records parsed whole
    (the same document, shuffled)."""
    records = json.loads(large_repodata(150_000))["packages.conda"]  # ~75 MB of JSON as conda-index writes it
    orders = {"indexed": sorted(records), "shuffled": random.Random(1).sample(sorted(records), len(records))}
    for name, order in orders.items():
        document = {"info": {"subdir": "linux-64"}, "packages": {}, "packages.conda": {k: records[k] for k in order}}
        body = json.dumps(document, indent=2).encode()  # the records' own bytes alike in both
        (upstream.root / name / "linux-64").mkdir(parents=True)
        (upstream.root / name / "linux-64" / "repodata.json.zst").write_bytes(zstandard.ZstdCompressor().compress(body))
        (upstream.root / name / "noarch").mkdir()  # what a new connector's check reads
        (upstream.root / name / "noarch" / "repodata.json").write_text('{"info": {"subdir": "noarch"}}')
    server = start_server(tmp_path / "data")
    try:
        feeds = {name: new_proxy_feed(server, f"{upstream.url}/{name}") for name in orders}
        with server.client(timeout=120) as client:
            rss_before, _ = _worker_memory_kib(server)
            indexed = client.get(f"/conda/{feeds['indexed']}/linux-64/repodata.json.zst")
            _, peak = _worker_memory_kib(server)  # before the shuffled one is parsed whole
            shuffled = client.get(f"/conda/{feeds['shuffled']}/linux-64/repodata.json.zst")
        assert indexed.status_code == shuffled.status_code == 200
        assert indexed.content == shuffled.content and indexed.headers["etag"] == shuffled.headers["etag"]
        served = json.loads(conda_decodes(indexed.content))["packages.conda"]
        assert served == records
        # Read whole, the worker's peak grew by ~2.7x the JSON (the document, the records, their dict);
        # piece by piece, by the .zst as received, the blocks and names, a window and a few blocks
        # being compressed (~60 MB whatever the size).
        print(f"worker peak grew by {(peak - rss_before) / 1024:.0f} MiB for {len(body) / 2**20:.0f} MiB of JSON")
        assert (peak - rss_before) * 1024 < 1.5 * len(body), (peak - rss_before, len(body))
    finally:
        server.stop()
