"""`python -m learnd ...` is the `learnd` command line."""
import sys

from learnd.clients.cli import main

if __name__ == "__main__":
    sys.exit(main())
