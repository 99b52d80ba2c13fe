"""Validates Kubernetes manifests offline; run by validate.sh with the venv's python.

Every document of every file (YAML or JSON, all documents; `kind: *List` items one by one)
is checked against the strict (no unknown fields) JSON schemas kubernetes-validate ships for
one Kubernetes version. Any invalid document, unknown field, unknown kind (no schema: an error
here, not kubernetes-validate's warning), unparseable file or non-manifest document fails the
run. A few rules the API server enforces and the schemas do not are checked too: metadata.name
present, a workload's selector matching its template's labels, resource quantities, no two
objects with the same kind, namespace and name. And across documents: a container that mounts
a ConfigMap's ringmesh config must have a volume under every path that config names (sockets,
certificates; the persisted config and the node socket too when its root filesystem is
read-only), writable where the proxy writes.

Each ConfigMap key named config.yaml / config.yml / config.json (a ringmesh config) is written
out for validate.sh to run `uring-proxy --check-config` on; each key named nats.conf likewise
for `nats-server -t`. Their paths go to the file named by --extract, one `KIND<TAB>LABEL<TAB>PATH`
line each.
"""

import argparse
import os
import re
import sys

import yaml
import kubernetes_validate
import kubernetes_validate.utils as kv

QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|[KMGTPE]i|[numkMGTPE])?$")
RINGMESH_KEYS = ("config.yaml", "config.yml", "config.json")
WORKLOADS = ("Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "Job")


def manifest_files(paths):
    """Every .yaml/.yml/.json file under each directory (sorted), and each file as given."""
    out = []
    for p in paths:
        if os.path.isdir(p):
            found = []
            for d, dirs, files in os.walk(p):
                dirs.sort()
                found += [os.path.join(d, f) for f in sorted(files) if f.endswith((".yaml", ".yml", ".json"))]
            if not found:
                raise SystemExit(f"validate: {p}: no .yaml, .yml or .json files in it")
            out += found
        elif os.path.isfile(p):
            out.append(p)
        else:
            raise SystemExit(f"validate: {p}: no such file or directory")
    seen, unique = set(), []
    for f in out:
        key = os.path.realpath(f)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def quantities(obj, path=""):
    """(path, value) of every resources.requests/limits entry and every volume size."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            p = f"{path}.{k}" if path else k
            if k in ("requests", "limits") and isinstance(v, dict) and path.endswith("resources"):
                for name, q in v.items():
                    yield f"{p}.{name}", q
            elif k == "sizeLimit":
                yield p, v
            else:
                yield from quantities(v, p)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from quantities(v, f"{path}[{i}]")


def get(obj, *keys):
    """obj[k1][k2]..., or {} where a level is missing or not a mapping."""
    for k in keys:
        obj = obj.get(k) if isinstance(obj, dict) else None
    return obj if isinstance(obj, dict) else {}


def extra_checks(doc):
    """What the API server refuses and the schemas let through (also run after a schema
    failure, which names only the first error)."""
    errors = []
    meta = get(doc, "metadata")
    if not meta.get("name") and not meta.get("generateName"):
        errors.append("metadata.name: missing")
    for p, q in quantities(get(doc, "spec"), "spec"):
        if not QUANTITY.match(str(q)):
            errors.append(f"{p}: {q!r} is not a Kubernetes quantity")
    if doc.get("kind") in WORKLOADS:
        have = get(doc, "spec", "template", "metadata", "labels")
        for k, v in get(doc, "spec", "selector", "matchLabels").items():
            if have.get(k) != v:
                errors.append(f"spec.selector.matchLabels.{k}: {v!r} does not match the template's labels")
    return errors


def config_paths(text):
    """(field, path, written) for every file or socket a ringmesh config names."""
    try:
        c = yaml.safe_load(text)
    except yaml.YAMLError:
        return []  # uring-proxy --check-config reports it
    if not isinstance(c, dict):
        return []
    out = []
    ident = get(c, "identity")
    for k in ("socket", "cert", "key", "bundle"):
        if isinstance(ident.get(k), str):
            out.append((f"identity.{k}", ident[k], False))
    if c.get("mode") == "node":
        out.append(("node.socket", get(c, "node").get("socket", "/run/ringmesh/node.sock"), True))
    nats = get(c, "control_plane", "nats")
    for k in ("ca", "cert", "key"):
        if isinstance(get(nats, "tls").get(k), str):
            out.append((f"control_plane.nats.tls.{k}", nats["tls"][k], False))
    if isinstance(nats.get("persist"), str):
        out.append(("control_plane.nats.persist", nats["persist"], True))
    return out


def pod_spec(doc):
    if doc.get("kind") == "Pod":
        return get(doc, "spec")
    if doc.get("kind") == "CronJob":
        return get(doc, "spec", "jobTemplate", "spec", "template", "spec")
    return get(doc, "spec", "template", "spec")


def mount_checks(workloads, configs, fail):
    """Each container mounting a ringmesh ConfigMap has volumes for the paths it names."""
    for where, doc in workloads:
        spec = pod_spec(doc)
        ns = get(doc, "metadata").get("namespace")
        cm_volumes = {v.get("name"): get(v, "configMap").get("name")
                      for v in spec.get("volumes") or [] if isinstance(v, dict) and "configMap" in v}
        for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
            if not isinstance(c, dict):
                continue
            mounts = [m for m in c.get("volumeMounts") or [] if isinstance(m, dict)]
            for m in mounts:
                cm = cm_volumes.get(m.get("name"))
                text = configs.get((ns, cm)) or configs.get((None, cm))
                if text is None:
                    continue
                for field, path, written in config_paths(text):
                    # A subPath mount provides its one path; any other mount, what is under it.
                    under = [x for x in mounts if isinstance(x.get("mountPath"), str) and (
                        path == x["mountPath"] if x.get("subPath")
                        else path.startswith(x["mountPath"].rstrip("/") + "/"))]
                    read_only_root = get(c, "securityContext").get("readOnlyRootFilesystem") is True
                    if not under and written and not read_only_root:
                        continue  # written into the container's own filesystem
                    if not under:
                        fail(where, f"container {c.get('name')}: {field} {path} (ConfigMap {cm}) "
                                    "is on no volume mount")
                    elif written and all(x.get("readOnly") for x in under):
                        fail(where, f"container {c.get('name')}: {field} {path} (ConfigMap {cm}) "
                                    "is written but its volume is mounted read-only")


def label(doc):
    meta = get(doc, "metadata")
    ns = meta.get("namespace")
    name = meta.get("name", "?")
    return f"{doc.get('kind', '?')}/{ns + '/' if ns else ''}{name}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-k", "--kubernetes-version", required=True)
    ap.add_argument("--extract", required=True, help="where to list the configs to check")
    ap.add_argument("--extract-dir", required=True)
    ap.add_argument("paths", nargs="+")
    args = ap.parse_args()

    version = args.kubernetes_version.lstrip("v")
    shipped = sorted(set(kv.all_versions()), key=lambda v: tuple(int(x) for x in v.split(".")))
    if version.count(".") == 1:
        version += ".0"
    if version not in shipped:
        raise SystemExit(
            f"validate: kubernetes-validate {kubernetes_validate.__version__} has no schemas for "
            f"Kubernetes {version}; it ships {', '.join(shipped[-4:])} (newest last)")

    files = manifest_files(args.paths)
    failures, documents, empty = 0, 0, 0
    names = {}
    extracted = []
    workloads, configs = [], {}

    def fail(where, msg):
        nonlocal failures
        failures += 1
        print(f"FAIL {where}: {msg}")

    for f in files:
        try:
            with open(f) as fh:
                docs = list(yaml.safe_load_all(fh))
        except (yaml.YAMLError, OSError, UnicodeDecodeError) as e:
            fail(f, f"cannot parse: {e}")
            continue
        n_before = documents
        for i, doc in enumerate(docs):
            where = f"{f} (document {i + 1})"
            if doc is None:
                empty += 1
                continue
            if not isinstance(doc, dict) or not all(isinstance(doc.get(k), str) for k in ("apiVersion", "kind")):
                fail(where, "not a Kubernetes object (no apiVersion and kind)")
                continue
            items = [doc]
            if doc["kind"].endswith("List") and isinstance(doc.get("items"), list):
                items = doc["items"]
            for item in items:
                documents += 1
                if not isinstance(item, dict) or not all(isinstance(item.get(k), str) for k in ("apiVersion", "kind")):
                    fail(where, "a list item is not a Kubernetes object")
                    continue
                what = f"{where} {label(item)}"
                try:
                    kv.validate(item, version, strict=True)
                except kv.ValidationError as e:
                    path = ".".join(str(p) for p in e.path) or "(top level)"
                    fail(what, f"{path}: {e.message}")
                except kv.SchemaNotFoundError as e:
                    fail(what, f"{e.message} (unknown kind or apiVersion, or not a built-in type)")
                    continue
                except Exception as e:  # a schema the library cannot use: never a pass
                    fail(what, f"could not be validated: {e}")
                    continue
                for msg in extra_checks(item):
                    fail(what, msg)
                meta = get(item, "metadata")
                # Per directory: a directory is one apply unit (inject/examples and
                # inject/golden hold the same objects before and after injection).
                key = (os.path.dirname(f), item["apiVersion"].split("/")[0] if "/" in item["apiVersion"] else "",
                       item["kind"], meta.get("namespace"), meta.get("name"))
                if meta.get("name"):
                    if key in names:
                        fail(what, f"the same object as {names[key]}")
                    else:
                        names[key] = where
                if item["kind"] in WORKLOADS + ("Pod", "CronJob"):
                    workloads.append((what, item))
                if item["kind"] == "ConfigMap" and item.get("apiVersion") == "v1":
                    for k, v in get(item, "data").items():
                        if not isinstance(v, str):
                            continue  # the schema check has failed it
                        if k in RINGMESH_KEYS:
                            configs[(meta.get("namespace"), meta.get("name"))] = v
                        kind = "ringmesh" if k in RINGMESH_KEYS else "nats" if k == "nats.conf" else None
                        if kind is None:
                            continue
                        out_dir = os.path.join(args.extract_dir, str(len(extracted)))
                        os.makedirs(out_dir)
                        out = os.path.join(out_dir, k)
                        with open(out, "w") as fh:
                            fh.write(v)
                        extracted.append(f"{kind}\t{f}: {label(item)} key {k}\t{out}")
        if documents == n_before:
            fail(f, "no Kubernetes object in it")

    mount_checks(workloads, configs, fail)

    with open(args.extract, "w") as fh:
        fh.write("".join(line + "\n" for line in extracted))

    status = "ok" if failures == 0 else f"{failures} failure(s)"
    print(f"validated {documents} documents in {len(files)} files against Kubernetes {version} "
          f"(kubernetes-validate {kubernetes_validate.__version__}, strict){'; ' + str(empty) + ' empty documents' if empty else ''}: {status}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
