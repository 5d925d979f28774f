from calm_core.cli import main

raise SystemExit(main())
