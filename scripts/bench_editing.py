#!/usr/bin/env python
"""Sequential-editing benchmark (zsRE, natural or synthetic facts); see sam/bench/editing.py or --help."""

import sys

from sam.bench.editing import main

if __name__ == "__main__":
    sys.exit(main())
