import json, sys, glob
out, pid = sys.argv[1], sys.argv[2]
exp = {t: [tuple(x) for x in json.load(open(f"{out}.{t}.json"))][::-1] for t in ("main", "worker")}
for fn in sorted(glob.glob(f"/work/notes/python-verify/read.{pid}.*.json")):
    got = [tuple(x) for x in json.load(open(fn))]
    m = [t for t, e in exp.items() if e == got]
    print(fn, "MATCHES traceback of", m if m else "NOTHING", "" if m else (got, exp))
