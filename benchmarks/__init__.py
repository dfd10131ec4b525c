"""Speed of our compiled programs, side by side with the PyTorch stack the
RiFT authors used (torch eager + torchattacks), run from the repository root:

  python -m benchmarks.base --out=base.json        # PGD-10, PGD-AT step, FLOP/s, α
  python -m benchmarks.mrc --out=mrc.json          # MRC vs the authors' loop
  python -m benchmarks.autoattack --out=aa.json    # standard AutoAttack
  python -m benchmarks --out=all.json              # all three, one process each

Each writes JSON and a Markdown summary (`common.write`); every key is
declared once, in `schema.py`. `--help` lists a phase's flags. Not part of
the installed library.
"""
