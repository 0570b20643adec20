import sys

from napari_medenhance.cli import main

sys.exit(main())
