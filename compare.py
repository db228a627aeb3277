"""Train the same latent-variable models in PyTorch, JAX and TensorFlow and compare them side by side.

`python compare.py --help` lists the options and subcommands; the `vae-compare` command (installed with the
package) is the same program. The code lives in runner/ (the command line and the workers) and report/.
"""

import sys

from runner.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
