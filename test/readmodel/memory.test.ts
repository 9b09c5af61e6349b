import * as Memory from "../../src/readmodel/memory.ts"
import { readModelConformance } from "./conformance.ts"

readModelConformance("memory", () => Memory.layer)
