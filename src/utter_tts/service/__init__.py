"""What both HTTP faces (utter_tts.server and utter_tts.compat) stand on: API keys, errors with their HTTP
status, reference audio sent inline (decoding, probing, the cache of voices built from it) and job records."""
