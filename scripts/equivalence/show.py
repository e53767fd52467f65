"""Print a results JSON as a table: python show.py $EQUIV_WORK/results/uce2023.json"""

import json
import sys

data = json.load(open(sys.argv[1]))
print("ours:", data["ours"])
for row in data["rows"]:
    print(f"== {row['scenario']}")
    for label, r in row["results"].items():
        if r["max"] is None:
            print(f"   {label:60s} -")
            continue
        only = f" only-ours {len(r['only_ours'])} only-theirs {len(r['only_theirs'])}" if r["only_ours"] or r["only_theirs"] else ""
        print(f"   {label:60s} max {r['max']:.2e} median {r['median']:.2e} n={r['tensors']}{only}")
