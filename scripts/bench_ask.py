"""Time to a first answer: `sam ask` from a new process to the printed answer (see sam/bench/startup.py)."""

from sam.bench.startup import main

if __name__ == "__main__":
    main()
