"""`basinlab data download` and `train --download` against a local HTTP server on 127.0.0.1 (with Range
support) that serves small archives in the real formats: the CIFAR python tarball, gzipped MNIST IDX files.
No test here reaches the internet: every URL is the local server's, and urlopen refuses any other host."""
import gzip
import hashlib
import io
import pickle
import socket
import struct
import tarfile
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from basinlab.cli import main
from basinlab.data import DATASETS
from basinlab.data import download as dl
from basinlab.data.catalog import SOURCES, Archive, Source
from basinlab.data.formats import read_arrays

CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz")


# ------------------------------------------------------------------------------ fixture archives
def cifar10_batches(seed=0, per_batch=4) -> dict[str, tuple[np.ndarray, list[int]]]:
    rng = np.random.default_rng(seed)
    return {name: (rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8), rng.integers(0, 10, per_batch).tolist())
            for name in CIFAR_BATCHES}


def cifar10_tarball(batches) -> bytes:
    """cifar-10-python.tar.gz as published: protocol-2 pickles with bytes keys, plus batches.meta."""
    files = {f"{CIFAR_FOLDER}/batches.meta": pickle.dumps(
        {b"num_cases_per_batch": 4, b"label_names": [b"class%d" % i for i in range(10)], b"num_vis": 3072},
        protocol=2)}
    for name, (data, labels) in batches.items():
        files[f"{CIFAR_FOLDER}/{name}"] = pickle.dumps(
            {b"batch_label": name.encode(), b"labels": labels, b"data": data,
             b"filenames": [b"img%d.png" % i for i in range(len(labels))]}, protocol=2)
    return tarball(files, folders=[CIFAR_FOLDER])


def tarball(files: dict[str, bytes], folders=(), links=()) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for folder in folders:
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return out.getvalue()


def idx_gz(array: np.ndarray) -> bytes:
    magic = 0x00000803 if array.ndim == 3 else 0x00000801
    return gzip.compress(struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.tobytes(), mtime=0)


def mnist_files(seed=0) -> tuple[dict[str, bytes], dict]:
    rng = np.random.default_rng(seed)
    arrays = {"train": (rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), rng.integers(0, 10, 20, dtype=np.uint8)),
              "val": (rng.integers(0, 256, (10, 28, 28), dtype=np.uint8), rng.integers(0, 10, 10, dtype=np.uint8))}
    files = dict(zip(IDX_FILES, [idx_gz(a) for split in ("train", "val") for a in arrays[split]]))
    return files, arrays


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# ------------------------------------------------------------------------------ the local server
class Handler(BaseHTTPRequestHandler):
    """GET with `Range: bytes=N-`; the server's `cut` sends only the first K bytes of a file's body once."""

    def do_GET(self):
        server = self.server
        body = server.files.get(self.path)
        server.requests.append((self.path, self.headers.get("Range")))
        if body is None:
            self.send_error(404)
            return
        start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
        if start >= len(body):
            self.send_error(416)
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        cut = server.cut.pop(self.path, None)
        self.wfile.write(body[start:] if cut is None else body[start:start + cut])

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.files, httpd.cut, httpd.requests = {}, {}, []
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}/"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def local_only(monkeypatch):
    """Any URL but the local server's fails the test instead of reaching the network."""
    real = urllib.request.urlopen

    def urlopen(request, *args, **kwargs):
        assert request.full_url.startswith("http://127.0.0.1:"), request.full_url
        return real(request, *args, **kwargs)

    monkeypatch.setattr(dl.urllib.request, "urlopen", urlopen)


def serve_cifar10(server, monkeypatch, batches=None, archive=None, md5sum=None, mirrors=None):
    archive = archive if archive is not None else cifar10_tarball(batches or cifar10_batches())
    server.files["/cifar-10-python.tar.gz"] = archive
    source = Source((Archive("cifar-10-python.tar.gz", md5sum or md5(archive), tuple(mirrors or [server.base])),),
                    "tar", tuple(f"{CIFAR_FOLDER}/{name}" for name in CIFAR_BATCHES))
    monkeypatch.setitem(SOURCES, "cifar10", source)
    return archive


def nothing_half_written(root: Path, *, keep=()) -> None:
    """No dataset folder and no staging folder; only the download files named in `keep` remain."""
    held = sorted(str(path.relative_to(root)) for path in root.rglob("*")) if root.exists() else []
    expected = sorted({".downloads", ".downloads/cifar10", ".downloads/cifar10/lock", *keep}) if keep else []
    assert held == expected


def one_error_line(capsys, *needles) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("basinlab: error: ") and "Traceback" not in "\n".join(err), err
    for needle in needles:
        assert str(needle) in err[-1], (needle, err[-1])
    return err[-1]


# ------------------------------------------------------------------------------------ the tests
def test_download_then_train_reads_it(server, monkeypatch, tmp_path, capsys, no_run_plots):
    batches = cifar10_batches()
    serve_cifar10(server, monkeypatch, batches)
    root = tmp_path / "datasets"
    assert main(["data", "download", "cifar10", "--datasets-dir", str(root)]) == 0
    out, err = capsys.readouterr()
    assert f"cifar10: downloaded to {root / 'cifar10' / CIFAR_FOLDER}" in out
    assert f"downloading {server.base}cifar-10-python.tar.gz" in err and "100%" in err   # progress lines, no tty
    assert sorted(p.name for p in root.iterdir()) == ["cifar10"]   # no partial file or staging folder left
    data = read_arrays("cifar10", root)
    train = [batches[name] for name in CIFAR_BATCHES[:5]]
    assert np.array_equal(data.train.images.reshape(-1, 3072), np.concatenate([d for d, _ in train]))
    assert data.train.labels.tolist() == sum((labels for _, labels in train), [])
    assert np.array_equal(data.val.images.reshape(-1, 3072), batches["test_batch"][0])

    assert main(["data", "download", "cifar10", "--datasets-dir", str(root)]) == 0   # already there: no request
    assert "already present" in capsys.readouterr().out and len(server.requests) == 1
    assert main(["train", "--dataset", "cifar10", "--datasets-dir", str(root), "--model", "cifar10_shallow",
                 "--train-limit", "10", "--epochs", "1", "-b", "5", "--results-dir", str(tmp_path / "runs"),
                 "--save", "r", "--quiet"]) == 0
    assert f"data found in {root / 'cifar10' / CIFAR_FOLDER}" in (tmp_path / "runs" / "r" / "log.txt").read_text()


def test_train_download_fetches_mnist_without_torchvision(server, monkeypatch, tmp_path, no_run_plots):
    files, arrays = mnist_files()
    server.files.update({f"/{name}": data for name, data in files.items()})
    source = Source(tuple(Archive(name, md5(data), (server.base,)) for name, data in files.items()),
                       "keep", IDX_FILES)
    monkeypatch.setitem(SOURCES, "mnist", source)
    monkeypatch.setenv("BASINLAB_DATASETS", str(tmp_path / "env-datasets"))   # the default folder
    assert main(["train", "--dataset", "mnist", "--download", "--train-limit", "10", "--epochs", "1", "-b", "5",
                 "--results-dir", str(tmp_path / "runs"), "--quiet"]) == 0
    root = tmp_path / "env-datasets"
    assert sorted(p.name for p in (root / "mnist").iterdir()) == sorted(IDX_FILES)   # gzipped IDX, as served
    data = read_arrays("mnist", root)
    assert np.array_equal(data.train.images[:, 0], arrays["train"][0])
    assert np.array_equal(data.val.labels, arrays["val"][1])


def test_wrong_checksum_is_one_line_and_leaves_nothing(server, monkeypatch, tmp_path, capsys):
    serve_cifar10(server, monkeypatch, md5sum="0" * 32)
    root = tmp_path / "datasets"
    assert main(["data", "download", "cifar10", "--datasets-dir", str(root)]) == 2
    one_error_line(capsys, "MD5", "not the published " + "0" * 32, "deleted", "--datasets-dir", CIFAR_FOLDER)
    nothing_half_written(root)


def test_truncated_transfer_then_resume(server, monkeypatch, tmp_path, capsys):
    archive = serve_cifar10(server, monkeypatch)
    server.cut["/cifar-10-python.tar.gz"] = 1000
    root = tmp_path / "datasets"
    assert main(["data", "download", "cifar10", "--datasets-dir", str(root)]) == 2
    one_error_line(capsys, f"stopped at 1,000 of {len(archive):,} bytes", "rerun the same command to resume")
    part = ".downloads/cifar10/cifar-10-python.tar.gz.part"
    nothing_half_written(root, keep=[part])
    assert (root / part).read_bytes() == archive[:1000]
    assert main(["data", "download", "cifar10", "--datasets-dir", str(root)]) == 0
    assert server.requests[-1] == ("/cifar-10-python.tar.gz", "bytes=1000-")   # only the rest was asked for
    assert sorted(p.name for p in root.iterdir()) == ["cifar10"]
    assert read_arrays("cifar10", root).train.images.shape == (20, 3, 32, 32)


def test_a_whole_partial_file_is_verified_not_fetched_again(server, monkeypatch, tmp_path, capsys):
    archive = serve_cifar10(server, monkeypatch)
    part = tmp_path / ".downloads" / "cifar10" / "cifar-10-python.tar.gz.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(archive)   # a run stopped after the last byte, before the checksum
    assert main(["data", "download", "cifar10", "--datasets-dir", str(tmp_path)]) == 0
    assert server.requests == [("/cifar-10-python.tar.gz", f"bytes={len(archive)}-")]   # answered 416
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar10"]


def test_server_gone_names_the_url_and_the_layout(server, monkeypatch, tmp_path, capsys):
    with socket.socket() as probe:   # a port that was free a moment ago: nobody listens on it now
        probe.bind(("127.0.0.1", 0))
        gone = f"http://127.0.0.1:{probe.getsockname()[1]}/"
    serve_cifar10(server, monkeypatch, mirrors=[server.base + "missing/", gone])   # a 404, then no server
    root = tmp_path / "datasets"
    assert main(["data", "download", "cifar10", "--datasets-dir", str(root)]) == 2
    one_error_line(capsys, f"{server.base}missing/cifar-10-python.tar.gz (HTTP 404", f"{gone}cifar-10-python",
                   "check the network", f"place the dataset by hand under --datasets-dir {root}", CIFAR_FOLDER)
    nothing_half_written(root)


def test_a_second_mirror_serves_when_the_first_is_gone(server, monkeypatch, tmp_path, capsys):
    serve_cifar10(server, monkeypatch, mirrors=[server.base + "missing/", server.base])
    assert main(["data", "download", "cifar10", "--datasets-dir", str(tmp_path)]) == 0
    assert (tmp_path / "cifar10" / CIFAR_FOLDER / "test_batch").is_file()


@pytest.mark.parametrize("member, problem", [
    ("../escaped", "'..'"), ("/tmp/absolute-member", "an absolute path"), ("link", "a link or special file")])
def test_an_unsafe_tar_member_is_refused(server, monkeypatch, tmp_path, capsys, member, problem):
    files = {f"{CIFAR_FOLDER}/data_batch_1": b"x"}
    links = []
    if member == "link":
        links = [(f"{CIFAR_FOLDER}/data_batch_2", "../../outside")]
    else:
        files[member] = b"payload"
    serve_cifar10(server, monkeypatch, archive=tarball(files, folders=[CIFAR_FOLDER], links=links))
    root = tmp_path / "datasets"
    assert main(["data", "download", "cifar10", "--datasets-dir", str(root)]) == 2
    one_error_line(capsys, problem, "refused, nothing was installed")
    assert not (tmp_path / "escaped").exists() and not (root / "escaped").exists()
    assert not Path("/tmp/absolute-member").exists()
    nothing_half_written(root)   # the refused archive is deleted too


def test_an_archive_without_the_layout_is_not_installed(server, monkeypatch, tmp_path, capsys):
    serve_cifar10(server, monkeypatch, archive=tarball({"other/data_batch_1": b"x"}))
    assert main(["data", "download", "cifar10", "--datasets-dir", str(tmp_path)]) == 2
    one_error_line(capsys, f"holds no {CIFAR_FOLDER}/data_batch_1", "nothing was installed")
    nothing_half_written(tmp_path)


def test_bad_names_and_an_occupied_folder_are_refused_before_any_transfer(server, monkeypatch, tmp_path, capsys):
    serve_cifar10(server, monkeypatch)
    assert main(["data", "download", "cifar10", "cifar1O", "--datasets-dir", str(tmp_path)]) == 2
    one_error_line(capsys, "unknown dataset 'cifar1O'", "mnist, fashion-mnist, cifar10, cifar100")
    assert main(["data", "download", "imagenet", "--datasets-dir", str(tmp_path)]) == 2
    one_error_line(capsys, "'imagenet' cannot be downloaded", "imagenet/train/<class>/")
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / "notes.txt").write_text("mine")
    assert main(["data", "download", "cifar10", "--datasets-dir", str(tmp_path)]) == 2
    one_error_line(capsys, f"{tmp_path / 'cifar10'} holds notes.txt but not the dataset", "move it away")
    assert (tmp_path / "cifar10" / "notes.txt").read_text() == "mine" and server.requests == []


def test_a_failed_write_is_exit_4(server, monkeypatch, tmp_path, capsys):
    serve_cifar10(server, monkeypatch)
    (tmp_path / "a-file").write_text("")
    assert main(["data", "download", "cifar10", "--datasets-dir", str(tmp_path / "a-file" / "datasets")]) == 4
    one_error_line(capsys, "cannot write", "choose another --datasets-dir")


def test_the_missing_data_error_says_how_to_get_the_data(tmp_path, capsys):
    empty = tmp_path / "empty"
    assert main(["train", "--dataset", "cifar10", "--datasets-dir", str(empty), "--results-dir", str(tmp_path)]) == 2
    one_error_line(capsys, "no CIFAR batches found", f"`basinlab data download cifar10 --datasets-dir {empty}`",
                   "--download", "--datasets-dir", "$BASINLAB_DATASETS")
    assert main(["train", "--dataset", "tiny-imagenet", "--datasets-dir", str(empty),
                 "--results-dir", str(tmp_path)]) == 2
    one_error_line(capsys, "basinlab cannot download it", f"place it under {empty} by hand", "$BASINLAB_DATASETS")
    assert list(tmp_path.iterdir()) == []   # refused before any run folder


def test_every_downloadable_dataset_has_a_source_and_is_named_in_the_help(capsys):
    assert set(SOURCES) == {name for name, info in DATASETS.items() if info.downloadable}
    with pytest.raises(SystemExit):
        main(["data", "download", "--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in SOURCES), out
    for source in SOURCES.values():
        for archive in source.archives:
            assert len(archive.md5) == 32 and all(m.endswith("/") for m in archive.mirrors)
