"""``python -m crab_langchain``: the ``crab-sessions`` command line."""

from crab_langchain.cli import main

if __name__ == "__main__":
    main()
