#!/usr/bin/env python3
"""Validate LANrage game profiles (profiles/*.toml).

Usage: python3 profiles/check.py [PROFILE_DIR]

Loads every *.toml in the profile directory (default: the directory of this
script) with the standard-library tomllib and enforces the profile schema:

  [game_id]                      ^[a-z0-9_]+$, unique across all files
  name = "..."                   required, non-empty string
  description = "..."            optional string
  executables = [...]            required, non-empty; "name" or {name=..., args=...}
  titles = ["glob", ...]         optional window-title globs
  ports = [27960, "27961-27963"] required, non-empty; 1..=65535 or "a-b" (a<=b, width<=1024)
  protocol = "udp"               "udp" | "tcp" | "both" (optional)
  broadcast = false              optional bool
  discovery_ports = [...]        optional, same format as ports
  multicast_groups = ["..."]     optional IPv4 addresses in 224.0.0.0/4
  keepalive = 25                 optional int 5..=60
  mtu = 1420                     optional int 1280..=1500
  priority = "medium"            "low" | "medium" | "high" (optional)
  low_latency / high_bandwidth / physical_capture   optional bools
  steam_app_ids = [730]          optional list of positive ints

Globs may only use `*` and `?` as wildcards. Each file must start with a `#`
comment line. Prints "N profiles in M files" on success; otherwise prints one
"file: id.field: problem" line per error and exits with status 1.
"""

from __future__ import annotations

import ipaddress
import re
import sys
import tomllib
from pathlib import Path

MIN_PROFILES = 150
ID_RE = re.compile(r"^[a-z0-9_]+$")
RANGE_RE = re.compile(r"^([0-9]{1,5})-([0-9]{1,5})$")
MAX_RANGE_WIDTH = 1024
GLOB_FORBIDDEN = set("[]{}\x00\n\r\t")
NAME_FORBIDDEN = set("/\\")

ALLOWED = {
    "name", "description", "executables", "titles", "ports", "protocol",
    "broadcast", "discovery_ports", "multicast_groups", "keepalive", "mtu",
    "priority", "low_latency", "high_bandwidth", "steam_app_ids",
    "physical_capture",
}
REQUIRED = ("name", "executables", "ports")
BOOLS = ("broadcast", "low_latency", "high_bandwidth", "physical_capture")
ENUMS = {"protocol": ("udp", "tcp", "both"), "priority": ("low", "medium", "high")}
INT_RANGES = {"keepalive": (5, 60), "mtu": (1280, 1500)}


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def normalise(name: str) -> str:
    """Process-name normalisation used by the matcher: lowercase, strip .exe/.bat."""
    n = name.lower()
    for suffix in (".exe", ".bat"):
        if n.endswith(suffix):
            return n[: -len(suffix)]
    return n


def glob_problem(pattern: str, *, is_name: bool) -> str | None:
    """Return a description of what is wrong with a glob, or None."""
    if pattern != pattern.strip():
        return "has leading/trailing whitespace"
    if not pattern:
        return "is empty"
    bad = sorted(c for c in set(pattern) if c in GLOB_FORBIDDEN)
    if bad:
        return f"contains unsupported glob/control characters {bad!r} (only * and ? are wildcards)"
    if is_name:
        bad = sorted(c for c in set(pattern) if c in NAME_FORBIDDEN)
        if bad:
            return f"contains path separators {bad!r}; use the bare process name"
        literal = pattern.replace("*", "").replace("?", "")
        if len(literal) < 2:
            return "has fewer than 2 literal characters (would match almost any process)"
    elif pattern.replace("*", "") == "":
        return "matches everything"
    return None


def check_ports(value, where: str, errors: list[str]) -> None:
    if not isinstance(value, list) or not value:
        errors.append(f"{where}: must be a non-empty array of ports")
        return
    seen = set()
    for i, p in enumerate(value):
        w = f"{where}[{i}]"
        if is_int(p):
            if not 1 <= p <= 65535:
                errors.append(f"{w}: port {p} outside 1..=65535")
            key = (p, p)
        elif isinstance(p, str):
            m = RANGE_RE.match(p)
            if not m:
                errors.append(f"{w}: {p!r} is not an integer or an \"a-b\" range")
                continue
            a, b = int(m.group(1)), int(m.group(2))
            if not (1 <= a <= 65535 and 1 <= b <= 65535):
                errors.append(f"{w}: range {p!r} outside 1..=65535")
            elif a > b:
                errors.append(f"{w}: range {p!r} has start > end")
            elif b - a + 1 > MAX_RANGE_WIDTH:
                errors.append(f"{w}: range {p!r} wider than {MAX_RANGE_WIDTH} ports")
            key = (a, b)
        else:
            errors.append(f"{w}: {p!r} must be an integer or an \"a-b\" string")
            continue
        if key in seen:
            errors.append(f"{w}: duplicate port {p!r}")
        seen.add(key)


def check_executables(value, where: str, errors: list[str]) -> None:
    if not isinstance(value, list) or not value:
        errors.append(f"{where}: must be a non-empty array")
        return
    seen = set()
    for i, e in enumerate(value):
        w = f"{where}[{i}]"
        if isinstance(e, str):
            name, args = e, None
        elif isinstance(e, dict):
            extra = set(e) - {"name", "args"}
            if extra:
                errors.append(f"{w}: unknown keys {sorted(extra)} (allowed: name, args)")
            name, args = e.get("name"), e.get("args")
            if not isinstance(args, str):
                errors.append(f"{w}.args: required string glob in a {{name, args}} entry")
                args = None
            else:
                prob = glob_problem(args, is_name=False)
                if prob:
                    errors.append(f"{w}.args: {args!r} {prob}")
        else:
            errors.append(f"{w}: must be a string or a {{ name = ..., args = ... }} table")
            continue
        if not isinstance(name, str):
            errors.append(f"{w}.name: required string")
            continue
        prob = glob_problem(name, is_name=True)
        if prob:
            errors.append(f"{w}: {name!r} {prob}")
        key = (normalise(name), args.lower() if isinstance(args, str) else None)
        if key in seen:
            errors.append(f"{w}: duplicate executable {e!r} (same name after lowercasing and stripping .exe/.bat)")
        seen.add(key)


def check_profile(gid: str, prof, errors: list[str]) -> None:
    if not ID_RE.match(gid):
        errors.append(f"{gid}: id must match ^[a-z0-9_]+$")
    if not isinstance(prof, dict):
        errors.append(f"{gid}: must be a table")
        return
    for k in sorted(set(prof) - ALLOWED):
        errors.append(f"{gid}.{k}: unknown field")
    for k in REQUIRED:
        if k not in prof:
            errors.append(f"{gid}.{k}: required field missing")

    if "name" in prof and (not isinstance(prof["name"], str) or not prof["name"].strip()):
        errors.append(f"{gid}.name: must be a non-empty string")
    if "description" in prof and not isinstance(prof["description"], str):
        errors.append(f"{gid}.description: must be a string")
    if "executables" in prof:
        check_executables(prof["executables"], f"{gid}.executables", errors)
    if "titles" in prof:
        t = prof["titles"]
        if not isinstance(t, list) or not t:
            errors.append(f"{gid}.titles: must be a non-empty array of strings")
        else:
            for i, s in enumerate(t):
                if not isinstance(s, str):
                    errors.append(f"{gid}.titles[{i}]: must be a string")
                else:
                    prob = glob_problem(s, is_name=False)
                    if prob:
                        errors.append(f"{gid}.titles[{i}]: {s!r} {prob}")
    for k in ("ports", "discovery_ports"):
        if k in prof:
            check_ports(prof[k], f"{gid}.{k}", errors)
    for k, allowed in ENUMS.items():
        if k in prof and prof[k] not in allowed:
            errors.append(f"{gid}.{k}: {prof[k]!r} not one of {', '.join(allowed)}")
    for k in BOOLS:
        if k in prof and not isinstance(prof[k], bool):
            errors.append(f"{gid}.{k}: must be true or false")
    for k, (lo, hi) in INT_RANGES.items():
        if k in prof:
            v = prof[k]
            if not is_int(v):
                errors.append(f"{gid}.{k}: must be an integer")
            elif not lo <= v <= hi:
                errors.append(f"{gid}.{k}: {v} outside {lo}..={hi}")
    if "multicast_groups" in prof:
        mg = prof["multicast_groups"]
        if not isinstance(mg, list) or not mg:
            errors.append(f"{gid}.multicast_groups: must be a non-empty array of IPv4 addresses")
        else:
            seen = set()
            for i, a in enumerate(mg):
                w = f"{gid}.multicast_groups[{i}]"
                try:
                    ip = ipaddress.IPv4Address(a) if isinstance(a, str) else None
                except ipaddress.AddressValueError:
                    ip = None
                if ip is None:
                    errors.append(f"{w}: {a!r} is not an IPv4 address")
                elif ip not in ipaddress.IPv4Network("224.0.0.0/4"):
                    errors.append(f"{w}: {a} is not in 224.0.0.0/4")
                elif a in seen:
                    errors.append(f"{w}: duplicate group {a}")
                seen.add(a)
    if "steam_app_ids" in prof:
        ids = prof["steam_app_ids"]
        if not isinstance(ids, list) or not ids:
            errors.append(f"{gid}.steam_app_ids: must be a non-empty array of integers")
        else:
            for i, v in enumerate(ids):
                if not is_int(v) or v <= 0:
                    errors.append(f"{gid}.steam_app_ids[{i}]: {v!r} must be a positive integer")
            if len(set(map(repr, ids))) != len(ids):
                errors.append(f"{gid}.steam_app_ids: duplicate ids")


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent
    files = sorted(root.glob("*.toml"))
    errors: list[str] = []
    owner: dict[str, str] = {}
    steam_owner: dict[int, str] = {}
    total = 0
    if not files:
        print(f"{root}: no *.toml profile files found")
        return 1
    for path in files:
        fname = path.name
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            errors.append(f"{fname}: (file): not valid UTF-8: {e}")
            continue
        if not text.startswith("#"):
            errors.append(f"{fname}: (file): must start with a '#' comment line naming its genre")
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            errors.append(f"{fname}: (file): TOML parse error: {e}")
            continue
        if not data:
            errors.append(f"{fname}: (file): contains no profiles")
        for gid, prof in data.items():
            total += 1
            perr: list[str] = []
            check_profile(gid, prof, perr)
            if gid in owner:
                perr.append(f"{gid}: duplicate id (also in {owner[gid]})")
            else:
                owner[gid] = fname
            if isinstance(prof, dict) and isinstance(prof.get("steam_app_ids"), list):
                for sid in prof["steam_app_ids"]:
                    if is_int(sid):
                        if sid in steam_owner and steam_owner[sid] != gid:
                            perr.append(f"{gid}.steam_app_ids: {sid} already used by {steam_owner[sid]}")
                        steam_owner.setdefault(sid, gid)
            errors.extend(f"{fname}: {e}" for e in perr)
    if total < MIN_PROFILES:
        errors.append(f"(all): (total): only {total} profiles, the loader requires >= {MIN_PROFILES}")
    if errors:
        for e in errors:
            print(e)
        print(f"{len(errors)} error(s); {total} profiles in {len(files)} files")
        return 1
    print(f"{total} profiles in {len(files)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
