"""Host-local administration: `hvd catalog backup|restore|checksum` and `hvd cluster recover`.

These read the host's files (host.data_dir of hvd.toml), not the API: a backup is a consistent
copy of this host's catalog replica, and restore and recovery run on a stopped host.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
from pathlib import Path

from hvd.catalog import backup as catalog_backup
from hvd.cli.commands import Action, Opt, Registry
from hvd.cli.http import CliError, Session
from hvd.config import Config, load_config

DEFAULT_CONFIG = Path("/etc/hvd/hvd.toml")  # where the package installs it


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", type=Path,
                        help=f"hvd.toml of this host (default: {DEFAULT_CONFIG} when it exists)")


def _config(args: argparse.Namespace) -> Config:
    path = args.config if args.config is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    return load_config(path)


def _describe(info: catalog_backup.CatalogInfo) -> str:
    return (f"applied index {info.applied_index}, schema {info.schema_version}, {info.size} bytes,"
            f" checksum {info.checksum}")


def catalog_backup_cmd(_: Session, args: argparse.Namespace) -> None:
    info = catalog_backup.backup(Path(_config(args).host.data_dir), Path(args.file))
    print(f"backed up the catalog to {info.path}: {_describe(info)}")


def catalog_restore_cmd(_: Session, args: argparse.Namespace) -> None:
    config = _config(args)
    if config.cluster.join:
        raise CliError("[cluster] join = true: a joining host takes the cluster's catalog; restore on a host"
                       " that founds the cluster (join = false)")
    info, kept = catalog_backup.restore(Path(args.file), Path(config.host.data_dir))
    print(f"restored {args.file} into {config.host.data_dir}: {_describe(info)}")
    if kept is not None:
        print(f"the previous catalog and Raft log are in {kept}")
    print("the next start founds the cluster from this catalog with the members of [cluster] peers;"
          " restore the same backup on every founding member, or join the others again from empty data dirs")


def catalog_checksum_cmd(_: Session, args: argparse.Namespace) -> None:
    path = Path(args.opt_file) if args.opt_file else Path(_config(args).host.data_dir) / catalog_backup.CATALOG_FILE
    info = catalog_backup.inspect(path)
    if args.opt_tables:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            print(json.dumps(catalog_backup.table_checksums(conn), indent=2))
        finally:
            conn.close()
        return
    print(f"{path}: {_describe(info)}")


def cluster_recover_cmd(_: Session, args: argparse.Namespace) -> None:
    from hvd.cluster.recover import force_new_cluster

    if not args.opt_force_new_cluster:
        raise CliError("this rewrites the Raft membership to this host alone: pass --force-new-cluster"
                       " (only when a quorum of the members is lost for good)")
    config = _config(args)
    own_url = config.cluster.peer_urls().get(config.node_id)
    done = force_new_cluster(Path(config.host.data_dir), config.node_id, own_url)
    print(f"{config.node_id} is now the only member (voter) of a new cluster, with its catalog at applied"
          f" index {done.applied_index}; previous members: {', '.join(sorted(done.previous_members))}")
    if done.dropped_entries:
        print(f"dropped {done.dropped_entries} log entries that were not applied here (never known committed)")
    if done.kept is not None:
        print(f"the previous Raft log is in {done.kept}")
    print("start hvd here; set [cluster] peers to this host, then join the other hosts again from empty"
          " data dirs ([cluster] join = true, then hvd cluster add)")


def register_admin(registry: Registry) -> None:
    registry.register_action("catalog", Action(
        "backup", "copy this host's catalog to FILE (consistent, while the daemon runs)", catalog_backup_cmd,
        (Opt("file", "", "the backup file to write"),), output=False, configure=_config_option))
    registry.register_action("catalog", Action(
        "restore", "install a backup as this host's catalog (hvd stopped)", catalog_restore_cmd,
        (Opt("file", "", "a file written by hvd catalog backup"),), output=False, configure=_config_option))
    registry.register_action("catalog", Action(
        "checksum", "checksum of a catalog's contents (this host's, or FILE's)", catalog_checksum_cmd,
        (Opt("--file", "", "a backup file instead of this host's catalog"),
         Opt("--tables", "", "one checksum per table, as JSON", kind="const", const=True)),
        output=False, configure=_config_option))
    registry.register_action("cluster", Action(
        "recover", "make this stopped host the only member of a new cluster, keeping its catalog",
        cluster_recover_cmd,
        (Opt("--force-new-cluster", "", "confirm: the lost members are gone for good", kind="const", const=True),),
        output=False, configure=_config_option))
