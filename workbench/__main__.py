"""``python -m workbench`` (the ranks of ``workbench train --nproc N``, and ``torchrun -m workbench train``)."""

from workbench.cli import main

if __name__ == "__main__":
    main()
