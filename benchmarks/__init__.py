"""Side-by-side benchmarks: hfcompress against the single tools a user would pick instead.

    python -m benchmarks run [--quick] [--suite encoder|decoder|all] [--threads 1,2]

See benchmarks/README.md for what each variant is and how the numbers are measured.
"""
