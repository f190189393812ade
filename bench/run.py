"""Run the benchmarks and print their figures as JSON (record them in bench/RESULTS.md).

    python -m bench.run import  [--projects 20000] [--latency-ms 50] [--concurrency 10]
    python -m bench.run memory  [--projects 100000]
    python -m bench.run opml    [--projects 2000] [--burst 1000]
    python -m bench.run web     [--projects 2000] [--seconds 10]
    python -m bench.run browse  [--projects 100000]
    python -m bench.run peer    [--projects 1000] [--latency-ms 20] [--concurrency 10]
    python -m bench.run http    (the lean HTTP client against treq's, GETs of one doc)
    python -m bench.run crawl   [--projects 1000] [--cache-mb 64]
    python -m bench.run scale   [--projects 700000] [--stored 100000]
    python -m bench.run reads   [--projects 200]  (reads by id: _all_docs keys, _bulk_get)

Each runs on pouchdb-server and on Apache CouchDB 3.5 (../shared/couchdb), one after
the other, unless ``--server pouchdb`` or ``--server apache`` picks one. Figures, not
assertions: every ratio is against a ceiling measured in the same run on the same
machine, on the same server. Nothing here reaches the internet.
"""

import argparse
import json
import sys


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.run")
    parser.add_argument("what", choices=("import", "memory", "opml", "web", "browse",
                                           "peer", "http", "crawl", "scale", "reads"))
    parser.add_argument("--projects", type=int)
    parser.add_argument("--latency-ms", type=float)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--stored", type=int, default=100_000,
                        help="scale: projects already current in CouchDB")
    parser.add_argument("--changes", choices=("xmlrpc", "simple"), default="xmlrpc",
                        help="scale: the importer's --changes (simple: it lists from "
                             "the /simple/ index's JSON)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--cache-mb", type=float,
                        help="crawl: the front's --cache-mb (default: the daemon's)")
    parser.add_argument("--no-ceilings", action="store_true",
                        help="browse: skip the raw ingest and empty-view runs")
    parser.add_argument("--server", choices=("pouchdb", "apache", "both"), default="both",
                        help="which CouchDB to run on (default: both, side by side)")
    args = parser.parse_args(argv)
    kinds = ("pouchdb", "apache") if args.server == "both" else (args.server,)
    result = {kind: one(args, kind) for kind in kinds}
    json.dump(result, sys.stdout, indent=2)
    print()


def one(args, kind: str) -> dict:
    if args.what == "import":
        from bench import bench_import
        latency = 50.0 if args.latency_ms is None else args.latency_ms
        result = bench_import.run(args.projects or 20_000, latency, args.concurrency, kind)
    elif args.what == "memory":
        from bench import bench_import
        from bench.common import couch_server
        with couch_server(kind) as couch:
            result = bench_import.full_import(couch, args.projects or 100_000, 0.0,
                                              args.concurrency, "memory")
    elif args.what == "opml":
        from bench import bench_opml
        result = bench_opml.run(args.projects or 2000, args.burst, kind)
    elif args.what == "web":
        from bench import bench_web
        result = bench_web.run(args.projects or 2000, args.seconds, kind)
    elif args.what == "http":
        from bench import bench_http
        result = bench_http.run(kind)
    elif args.what == "peer":
        from bench import bench_peer
        latency = 20.0 if args.latency_ms is None else args.latency_ms
        result = bench_peer.run(args.projects or 1000, latency, args.concurrency, kind)
    elif args.what == "crawl":
        from bench import bench_crawl
        result = bench_crawl.run(args.projects or 1000, kind, args.cache_mb)
    elif args.what == "reads":
        from bench import bench_reads
        result = bench_reads.run(args.projects or 200, kind)
    elif args.what == "scale":
        from bench import bench_scale
        result = bench_scale.run(args.projects or 700_000, args.stored, kind=kind,
                                 changes=args.changes)
    else:
        from bench import bench_browse
        result = bench_browse.run(args.projects or 100_000, args.seconds,
                                  ceilings=not args.no_ceilings, kind=kind)
    return result


if __name__ == "__main__":
    main()
