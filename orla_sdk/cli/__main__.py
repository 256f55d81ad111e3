from orla_sdk.cli.main import main

raise SystemExit(main())
