from tinypolicy.pipeline.cli import main

raise SystemExit(main())
