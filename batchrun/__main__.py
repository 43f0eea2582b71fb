from batchrun.cli import main

raise SystemExit(main())
