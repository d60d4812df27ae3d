import sys

from ddpm_keras.cli import main

sys.exit(main())
