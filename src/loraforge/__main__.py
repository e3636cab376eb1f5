"""`python -m loraforge ...` (also what `accelerate launch -m loraforge train CONFIG` runs)."""

from loraforge.cli import main

if __name__ == "__main__":
    main()
