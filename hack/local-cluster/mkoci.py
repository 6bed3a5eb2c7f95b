#!/usr/bin/env python3
"""Write a single-layer OCI image archive that `ctr -n k8s.io images import` accepts.

usage: mkoci.py OUT.tar FULLY/QUALIFIED/NAME:TAG ENTRYPOINT SRC:DST[:OCTALMODE] ...

ENTRYPOINT is either a JSON array ('["/app", "--flag", "a b"]') or a whitespace-separated string
("/app --flag"). Each SRC file is stored at DST in the layer (mode 0755 unless given); parent
directories are created. The archive is deterministic (mtime 0, sorted JSON).
"""
import gzip
import hashlib
import io
import json
import sys
import tarfile


def blob(data):
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def main(argv):
    if len(argv) < 4:
        sys.exit(__doc__)
    out, name, entry, *files = argv
    entrypoint = json.loads(entry) if entry.lstrip().startswith("[") else entry.split()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
        dirs = set()
        for spec in files:
            src, dst, *mode = spec.split(":")
            parts = dst.strip("/").split("/")[:-1]
            for i in range(len(parts)):
                d = "/".join(parts[: i + 1])
                if d not in dirs:
                    ti = tarfile.TarInfo(d)
                    ti.type = tarfile.DIRTYPE
                    ti.mode = 0o755
                    t.addfile(ti)
                    dirs.add(d)
            with open(src, "rb") as f:
                data = f.read()
            ti = tarfile.TarInfo(dst.strip("/"))
            ti.size = len(data)
            ti.mode = int(mode[0], 8) if mode else 0o755
            t.addfile(ti, io.BytesIO(data))
    diff_id = "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()
    layer_d, layer = blob(gzip.compress(raw.getvalue(), mtime=0))
    cfg_d, cfg = blob(json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": entrypoint, "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }, sort_keys=True).encode())
    man = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg_d, "size": len(cfg)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_d, "size": len(layer)}],
    }
    man_d, man_b = blob(json.dumps(man, sort_keys=True).encode())
    index = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": man["mediaType"], "digest": man_d, "size": len(man_b),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": name,
                            "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1]},
        }],
    }
    with tarfile.open(out, "w") as t:
        def add(path, data):
            ti = tarfile.TarInfo(path)
            ti.size = len(data)
            ti.mode = 0o644
            t.addfile(ti, io.BytesIO(data))
        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add("index.json", json.dumps(index, sort_keys=True).encode())
        for d, data in ((layer_d, layer), (cfg_d, cfg), (man_d, man_b)):
            add("blobs/sha256/" + d.split(":")[1], data)


if __name__ == "__main__":
    main(sys.argv[1:])
