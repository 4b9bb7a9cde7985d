#!/usr/bin/env python3
"""Export all CRM leads with fast_bitrix24, for the b24-export benchmark.

Usage:
    python fast_bitrix24_run.py WEBHOOK_URL [--select '*,UF_*,PHONE,EMAIL,WEB,IM,LINK']

Prints one JSON line on stdout:
    {"leads": N, "unique_ids": M, "seconds": S, "peak_rss_mib": X}
Everything else (library logging, warnings, the tqdm progress bar and a
summary of HTTP requests) goes to stderr.

Install: pip install fast-bitrix24   (written against fast-bitrix24 1.8.14)

What the library does for get_all('crm.lead.list', params={'select': [...]})
(read from fast_bitrix24 1.8.14 source, user_request.py / mult_request.py):
  1. adds order={"ID": "ASC"} and POSTs the first page as a JSON body
     {"select": [...], "order": {"ID": "ASC"}} to WEBHOOK + "crm.lead.list";
  2. reads "total" and builds one command per remaining page
     "crm.lead.list?select[0]=%2A&select[1]=UF_%2A&...&order[ID]=ASC&start=50"
     (its own http_build_query), packs them 50 per `batch` call
     ({"halt": 0, "cmd": {"cmd0000000000": ...}}, JSON body), and runs the
     batches concurrently;
  3. de-duplicates the rows (pickle round-trip into a set) and warns on stderr
     if the count differs from "total".
So it is offset pagination with COUNT on every page, not an ID cursor.

Plain http:// on loopback: fast_bitrix24 does not require https. It only
checks that the webhook parses as a URL with scheme, host and path
(utils._url_valid), appends "/" if missing and then posts to
webhook + method with aiohttp. aiohttp ignores the `ssl` argument for http://
URLs, so the simulator's http://127.0.0.1:PORT/rest/1/simwebhook0code/ works
as is; no option and no monkeypatching is needed. (`ssl=False` would only
matter for https with a self-signed certificate.)

Rate limits: the constructor has request_pool_size (leaky-bucket size) and
requests_per_second (drain rate); their defaults already are the standard
plan's 50 and 2.0. They are passed explicitly below so the benchmark does not
depend on future default changes. respect_velocity_policy=True (default) also
keeps its per-method sliding window of 480 s operating time per 10 minutes
(operating_time_limit=480). batch_size=50 (default, the Bitrix maximum).
Its concurrency cap is a module constant of 50 simultaneous HTTP requests
(srh.BITRIX_MAX_CONCURRENT_REQUESTS), not a constructor setting; left as is.
"""

import argparse
import json
import logging
import resource
import sys
import time

DEFAULT_SELECT = "*,UF_*,PHONE,EMAIL,WEB,IM,LINK"


class _RequestCounter(logging.Handler):
    """Counts HTTP attempts from the library's own debug log lines.

    fast_bitrix24 logs "Requesting {'method': ..., ...}" once per HTTP attempt
    (retries included) in ServerRequestHandler.request_attempt. Counting those
    records is a read-only way to learn how many requests were made; the
    record is never formatted, so the cost is small.
    """

    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.by_method = {}

    def emit(self, record):
        msg = record.msg
        if isinstance(msg, str) and msg.startswith("Requesting {'method': "):
            method = msg[len("Requesting {'method': "):].split(",", 1)[0]
            self.by_method[method] = self.by_method.get(method, 0) + 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("webhook", help="e.g. http://127.0.0.1:18200/rest/1/simwebhook0code/")
    ap.add_argument(
        "--select",
        default=DEFAULT_SELECT,
        help="comma-separated select list (default: %(default)s)",
    )
    ap.add_argument(
        "--log-level",
        default="INFO",
        help="level of library log lines printed on stderr (default: INFO; "
        "DEBUG prints every request and full response)",
    )
    ap.add_argument(
        "--no-progress",
        action="store_true",
        help="turn off fast_bitrix24's tqdm progress bar (verbose=False)",
    )
    args = ap.parse_args()

    # All logging to stderr. The library sets its logger "fast_bitrix24" to
    # DEBUG itself, so the level must be put on the handler, not only on the
    # root logger, or every full JSON response would be printed.
    handler = logging.StreamHandler(sys.stderr)
    level = getattr(logging, args.log_level.upper())
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # library warnings -> logging -> stderr

    counter = _RequestCounter()
    logging.getLogger("fast_bitrix24").addHandler(counter)

    from fast_bitrix24 import Bitrix
    from fast_bitrix24.__version__ import __version__ as fb_version

    select = [s.strip() for s in args.select.split(",") if s.strip()]

    b = Bitrix(
        args.webhook,
        verbose=not args.no_progress,
        request_pool_size=50,  # standard plan: bucket of 50 requests
        requests_per_second=2.0,  # standard plan: drains 2 requests/s
    )

    t0 = time.perf_counter()
    leads = b.get_all("crm.lead.list", params={"select": select})
    seconds = time.perf_counter() - t0

    ids = set()
    for lead in leads:
        if isinstance(lead, dict) and "ID" in lead:
            ids.add(str(lead["ID"]))

    # Linux reports ru_maxrss in KiB.
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    total_requests = sum(counter.by_method.values())
    print(
        f"fast_bitrix24 {fb_version}: {len(leads)} leads, {total_requests} HTTP requests "
        f"{json.dumps(counter.by_method, sort_keys=True)}, select={select}",
        file=sys.stderr,
    )

    print(
        json.dumps(
            {
                "leads": len(leads),
                "unique_ids": len(ids),
                "seconds": round(seconds, 3),
                "peak_rss_mib": round(peak_rss_mib, 1),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
