from benchmarks.command import main

raise SystemExit(main())
