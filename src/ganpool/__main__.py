from ganpool.cli import main

raise SystemExit(main())
