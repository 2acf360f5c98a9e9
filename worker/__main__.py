"""`python -m worker`: the supervisor of the media process pool."""

from worker.supervisor import main

if __name__ == "__main__":
    raise SystemExit(main())
