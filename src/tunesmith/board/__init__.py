"""`tunesmith board`: a local web page to plan, launch, watch, compare and try runs.

    tunesmith board --runs runs                      # http://127.0.0.1:7860
    tunesmith board --runs runs --host 0.0.0.0 --auth alice:s3cret

The board is a thin layer over the same functions the commands use: `runs` reads run folders,
`form` turns form fields into a Config through config.py's own loader (so errors are the YAML
path's one-liners), `jobs` starts `tunesmith train` as a detached process, `inspect` renders
`data preview` and streams generations, `app` serves the page (Starlette + uvicorn).
"""
